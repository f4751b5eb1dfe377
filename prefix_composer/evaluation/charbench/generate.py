"""Deterministic generator of the CharBench multiple-choice items.

Words come from an English word list (Debian ``wamerican``, SCOWL-derived; see README.md),
are filtered to lowercase ASCII ``[a-z]{3,12}`` and split by the Llama-3 tokenizer into
*single* (``" " + word`` is one token) and *multi* words. Every single-token word is paired
with an unused multi-token word of the same length, and each item is built for both words of
a pair with the same gold position, so the two splits are length-matched item by item.

Each subtask builder takes ``(word, gold, rng)`` and returns the item fields, or ``None``
when the word cannot carry an item with the answer at index ``gold``. Gold indices are
balanced (equal counts per index) and shuffled with ``random.Random``; nothing depends on
set iteration order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

SEED = 20240601
N_TEST = 300  # items per subtask and split
N_DEV = 8  # few-shot examples per subtask and split (disjoint words)
DEFAULT_WORDLIST = '/usr/share/dict/american-english'  # Debian package `wamerican`
WORDLIST_SHA256 = '9f513f1ceadb6a01c5485b7dbdfd5118dc66cd70b59cae2851292112d4066a32'  # wamerican 2020.12.07-2
DATA_DIR = Path(__file__).parent / 'data'
SPLITS = ('single', 'multi')

LETTERS = string.ascii_lowercase
VOWELS = 'aeiou'
CONSONANTS = ''.join(c for c in LETTERS if c not in VOWELS)
SPELL_THE_RESULT = 'How is the new word spelled?'

Item = dict[str, object]
Builder = Callable[[str, int, random.Random], Item | None]


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th'."""
    suffix = 'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')
    return f'{n}{suffix}'


def spell(word: str) -> str:
    """The answer-choice form of a letter sequence: ' s-t-r-a-w'."""
    return ' ' + '-'.join(word)


def place(gold_choice: str, distractors: list[str], gold: int) -> list[str]:
    """Choices with ``gold_choice`` at index ``gold`` and distractors in their given order."""
    return distractors[:gold] + [gold_choice] + distractors[gold:]


def letter_choices(answer: str, word: str, gold: int, rng: random.Random) -> list[str]:
    """Four single-letter choices: the answer plus letters of the word, topped up from a-z."""
    others = sorted(set(word) - {answer})
    rng.shuffle(others)
    extra = [c for c in LETTERS if c not in word]
    rng.shuffle(extra)
    distractors = (others + extra)[:3]
    return place(' ' + answer, [' ' + c for c in distractors], gold)


def distinct_letters(word: str) -> list[str]:
    return sorted(set(word))


# ---------------------------------------------------------------- subtask builders


def build_spelling(word: str, gold: int, rng: random.Random) -> Item | None:
    """Which letter sequence spells the word; distractors swap two adjacent letters or
    substitute one letter (vowel for vowel, consonant for consonant), so all have equal length."""
    variants: list[str] = []
    for _ in range(100):
        i = rng.randrange(len(word))
        if rng.random() < 0.5:
            if i == len(word) - 1 or word[i] == word[i + 1]:
                continue
            v = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        else:
            pool = VOWELS if word[i] in VOWELS else CONSONANTS
            v = word[:i] + rng.choice([c for c in pool if c != word[i]]) + word[i + 1:]
        if v not in variants:
            variants.append(v)
        if len(variants) == 3:
            return {
                'query': f'Q: How is the word {word} spelled?\nA:',
                'choices': place(spell(word), [spell(v) for v in variants], gold),
            }
    return None


def build_count(word: str, gold: int, rng: random.Random) -> Item | None:
    """How many times a letter occurs; choices are always ' 0'..' 3', so gold is the count."""
    counts = Counter(word)
    candidates = [c for c in LETTERS if counts[c] == gold]
    if not candidates:
        return None
    letter = rng.choice(candidates)
    return {
        'query': f'Q: How many times does the letter {letter} appear in the word {word}?\nA:',
        'choices': [' 0', ' 1', ' 2', ' 3'],
        'letter': letter,
    }


def build_contains(word: str, gold: int, rng: random.Random) -> Item | None:
    """Whether the word contains a letter; choices ' yes' / ' no'."""
    pool = distinct_letters(word) if gold == 0 else [c for c in LETTERS if c not in word]
    letter = rng.choice(pool)
    return {
        'query': f'Q: Does the word {word} contain the letter {letter}?\nA:',
        'choices': [' yes', ' no'],
        'letter': letter,
    }


def build_first(word: str, gold: int, rng: random.Random) -> Item | None:
    return {
        'query': f'Q: What is the first letter of the word {word}?\nA:',
        'choices': letter_choices(word[0], word, gold, rng),
    }


def build_last(word: str, gold: int, rng: random.Random) -> Item | None:
    return {
        'query': f'Q: What is the last letter of the word {word}?\nA:',
        'choices': letter_choices(word[-1], word, gold, rng),
    }


def build_nth(word: str, gold: int, rng: random.Random) -> Item | None:
    """The n-th letter for an inner position 2 .. len-1 (first and last have their own subtasks)."""
    position = rng.randrange(2, len(word))
    return {
        'query': f'Q: What is the {ordinal(position)} letter of the word {word}?\nA:',
        'choices': letter_choices(word[position - 1], word, gold, rng),
        'position': position,
    }


def edit_item(word: str, gold: int, rng: random.Random, min_letters: int, edit: Callable[[str], str],
              query: Callable[[str], str]) -> Item | None:
    """CUTE-style edit keyed on a letter of the word: the distractors apply the same edit to three
    other letters of the word, so every choice is a plausible, distinct result."""
    letters = distinct_letters(word)
    if len(letters) < min_letters:
        return None
    rng.shuffle(letters)
    target, others = letters[0], letters[1:4]
    return {
        'query': query(target),
        'choices': place(spell(edit(target)), [spell(edit(c)) for c in others], gold),
        'letter': target,
    }


def build_insert(word: str, gold: int, rng: random.Random) -> Item | None:
    new = rng.choice([c for c in LETTERS if c not in word])
    item = edit_item(
        word, gold, rng, 4, lambda c: word.replace(c, c + new),
        lambda c: f'Q: Insert the letter {new} after every letter {c} in the word {word}. {SPELL_THE_RESULT}\nA:',
    )
    return item and {**item, 'new_letter': new}


def build_delete(word: str, gold: int, rng: random.Random) -> Item | None:
    return edit_item(
        word, gold, rng, 4, lambda c: word.replace(c, ''),
        lambda c: f'Q: Delete every letter {c} from the word {word}. {SPELL_THE_RESULT}\nA:',
    )


def build_substitute(word: str, gold: int, rng: random.Random) -> Item | None:
    new = rng.choice([c for c in LETTERS if c not in word])
    item = edit_item(
        word, gold, rng, 4, lambda c: word.replace(c, new),
        lambda c: f'Q: Replace every letter {c} with {new} in the word {word}. {SPELL_THE_RESULT}\nA:',
    )
    return item and {**item, 'new_letter': new}


def swap_letters(word: str, a: str, b: str) -> str:
    return word.translate(str.maketrans(a + b, b + a))


def build_swap(word: str, gold: int, rng: random.Random) -> Item | None:
    """Swap two letters that occur once each; distractors swap three other such pairs."""
    counts = Counter(word)
    once = [c for c in distinct_letters(word) if counts[c] == 1]
    if len(once) < 4:
        return None
    pairs = [(a, b) for i, a in enumerate(once) for b in once[i + 1:]]
    rng.shuffle(pairs)
    (a, b), others = pairs[0], pairs[1:4]
    return {
        'query': f'Q: Swap the letters {a} and {b} in the word {word}. {SPELL_THE_RESULT}\nA:',
        'choices': place(spell(swap_letters(word, a, b)), [spell(swap_letters(word, *p)) for p in others], gold),
        'letter': a,
        'letter2': b,
    }


# name -> (builder, number of choices); chance level is 1 / number of choices
SUBTASKS: dict[str, tuple[Builder, int]] = {
    'spelling': (build_spelling, 4),
    'count': (build_count, 4),
    'contains': (build_contains, 2),
    'first': (build_first, 4),
    'last': (build_last, 4),
    'nth': (build_nth, 4),
    'insert': (build_insert, 4),
    'delete': (build_delete, 4),
    'substitute': (build_substitute, 4),
    'swap': (build_swap, 4),
}


def chance(subtask: str) -> float:
    return 1 / SUBTASKS[subtask][1]


# ---------------------------------------------------------------- words and pairs


def load_words(path: str) -> list[str]:
    """Sorted, deduplicated lowercase ASCII words of 3-12 letters."""
    with open(path, encoding='utf-8') as f:
        return sorted({w for w in (line.strip() for line in f) if re.fullmatch(r'[a-z]{3,12}', w)})


def count_tokens(words: list[str], tokenizer) -> dict[str, int]:
    """Number of tokens of each word in its in-context form, ``" " + word``."""
    ids = tokenizer([' ' + w for w in words], add_special_tokens=False).input_ids
    return {w: len(i) for w, i in zip(words, ids)}


def length_matched_pairs(n_tokens: dict[str, int], rng: random.Random) -> list[tuple[str, str]]:
    """(single, multi) pairs of equal length, in random order; each word in at most one pair."""
    words = sorted(n_tokens)
    multi_by_len: dict[int, list[str]] = {}
    for w in words:
        if n_tokens[w] > 1:
            multi_by_len.setdefault(len(w), []).append(w)
    for pool in multi_by_len.values():
        rng.shuffle(pool)
    singles = [w for w in words if n_tokens[w] == 1]
    rng.shuffle(singles)
    return [(s, multi_by_len[len(s)].pop()) for s in singles if multi_by_len.get(len(s))]


# ---------------------------------------------------------------- items


def balanced_golds(n: int, n_choices: int, rng: random.Random) -> list[int]:
    if n % n_choices:
        raise ValueError(f'{n} items cannot be balanced over {n_choices} choices.')
    golds = [i % n_choices for i in range(n)]
    rng.shuffle(golds)
    return golds


def make_items(subtask: str, fold: str, golds: list[int], pairs: list[tuple[str, str]],
               n_tokens: dict[str, int], rng: random.Random) -> dict[str, list[Item]]:
    """Items for both splits, consuming (removing) one pair per gold index from ``pairs``."""
    builder = SUBTASKS[subtask][0]
    out: dict[str, list[Item]] = {split: [] for split in SPLITS}
    for i, gold in enumerate(golds):
        for j, pair in enumerate(pairs):
            built = [builder(word, gold, rng) for word in pair]
            if all(built):
                break
        else:
            raise RuntimeError(f'{subtask}: no word pair left for gold index {gold}.')
        del pairs[j]
        for split, word, fields in zip(SPLITS, pair, built):
            out[split].append({
                'id': f'{subtask}-{split}-{fold}-{i:03d}', 'subtask': subtask, 'split': split, 'fold': fold,
                'word': word, 'n_tokens': n_tokens[word], **fields, 'gold': gold,
            })
    return out


def generate(n_tokens: dict[str, int], seed: int = SEED, n_test: int = N_TEST,
             n_dev: int = N_DEV) -> dict[str, list[Item]]:
    """All items keyed by output file name: ``<subtask>_<split>.jsonl`` (test) and ``dev.jsonl``."""
    files: dict[str, list[Item]] = {'dev.jsonl': []}
    for subtask, (_, n_choices) in SUBTASKS.items():
        rng = random.Random(f'{seed}/{subtask}')
        pairs = length_matched_pairs(n_tokens, rng)
        test = make_items(subtask, 'test', balanced_golds(n_test, n_choices, rng), pairs, n_tokens, rng)
        dev = make_items(subtask, 'dev', balanced_golds(n_dev, n_choices, rng), pairs, n_tokens, rng)
        for split in SPLITS:
            files[f'{subtask}_{split}.jsonl'] = test[split]
            files['dev.jsonl'] += dev[split]
    return files


def write_jsonl(files: dict[str, list[Item]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in files.items():
        with open(out_dir / name, 'w', encoding='utf-8', newline='\n') as f:
            f.writelines(json.dumps(item, ensure_ascii=True) + '\n' for item in items)


def sha256_file(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--wordlist', default=DEFAULT_WORDLIST)
    parser.add_argument('--out', type=Path, default=DATA_DIR)
    parser.add_argument('--seed', type=int, default=SEED)
    args = parser.parse_args(argv)

    digest = sha256_file(args.wordlist)
    if digest != WORDLIST_SHA256:
        print(f'warning: {args.wordlist} has sha256 {digest}, not that of wamerican 2020.12.07-2; '
              'the items will differ from the committed ones.')
    from prefix_composer.tokenizer import PackagedLlama3Tokenizer

    n_tokens = count_tokens(load_words(args.wordlist), PackagedLlama3Tokenizer())
    files = generate(n_tokens, seed=args.seed)
    write_jsonl(files, args.out)
    print(f'wrote {sum(map(len, files.values()))} items in {len(files)} files to {args.out}')
