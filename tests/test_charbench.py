"""CharBench items: answers correct by construction, no duplicates, balanced gold positions, the
single/multi split recounted with the Llama-3 tokenizer, reproducible generation, and a random model
scoring at chance through lm-eval."""

import json
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import lm_eval
import pytest
import yaml
from lm_eval.api.model import LM
from tokenizers import processors

from prefix_composer.evaluation.charbench import TASKS_DIR
from prefix_composer.evaluation.charbench.generate import (
    DEFAULT_WORDLIST,
    SUBTASKS,
    WORDLIST_SHA256,
    chance,
    main,
    sha256_file,
)
from prefix_composer.evaluation.tasks import build_task_manager
from prefix_composer.tokenizer import LLAMA3_BOS, PackagedLlama3Tokenizer

DATA_DIR = Path(__file__).resolve().parent.parent / 'prefix_composer' / 'evaluation' / 'charbench' / 'data'
SPLITS = ('single', 'multi')
NUM_CHOICES = {'contains': 2}  # every other subtask has 4 choices


def read(path: Path) -> list[dict]:
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


TEST_ITEMS = {(sub, split): read(DATA_DIR / f'{sub}_{split}.jsonl') for sub in SUBTASKS for split in SPLITS}
DEV_ITEMS = read(DATA_DIR / 'dev.jsonl')
ALL_ITEMS = [d for items in TEST_ITEMS.values() for d in items] + DEV_ITEMS


def dashed(word: str) -> str:
    return ' ' + '-'.join(word)


def nth(n: int) -> str:
    return f'{n}' + ('th' if 11 <= n <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th'))


def expected(d: dict) -> tuple[str, str]:
    """(query, correct choice) recomputed from the item's fields, independently of the generator."""
    w, sub = d['word'], d['subtask']
    a, b = d.get('letter'), d.get('letter2')
    x = d.get('new_letter')
    spelled = 'How is the new word spelled?'
    if sub == 'spelling':
        return f'Q: How is the word {w} spelled?\nA:', dashed(w)
    if sub == 'count':
        return f'Q: How many times does the letter {a} appear in the word {w}?\nA:', f' {sum(c == a for c in w)}'
    if sub == 'contains':
        return f'Q: Does the word {w} contain the letter {a}?\nA:', ' yes' if a in w else ' no'
    if sub == 'first':
        return f'Q: What is the first letter of the word {w}?\nA:', ' ' + w[0]
    if sub == 'last':
        return f'Q: What is the last letter of the word {w}?\nA:', ' ' + w[len(w) - 1]
    if sub == 'nth':
        p = d['position']
        assert 2 <= p < len(w)
        return f'Q: What is the {nth(p)} letter of the word {w}?\nA:', ' ' + w[p - 1]
    if sub == 'insert':
        assert a in w and x not in w
        return (f'Q: Insert the letter {x} after every letter {a} in the word {w}. {spelled}\nA:',
                dashed(''.join(c + x if c == a else c for c in w)))
    if sub == 'delete':
        assert a in w
        return f'Q: Delete every letter {a} from the word {w}. {spelled}\nA:', dashed(''.join(c for c in w if c != a))
    if sub == 'substitute':
        assert a in w and x not in w
        return (f'Q: Replace every letter {a} with {x} in the word {w}. {spelled}\nA:',
                dashed(''.join(x if c == a else c for c in w)))
    if sub == 'swap':
        assert w.count(a) == 1 and w.count(b) == 1 and a != b
        i, j = w.index(a), w.index(b)
        letters = list(w)
        letters[i], letters[j] = letters[j], letters[i]
        return f'Q: Swap the letters {a} and {b} in the word {w}. {spelled}\nA:', dashed(''.join(letters))
    raise AssertionError(f'unknown subtask {sub}')


def check_item(item: dict) -> None:
    query, answer = expected(item)
    assert item['query'] == query
    assert re.fullmatch(r'[a-z]{3,12}', item['word'])
    assert item['split'] == ('single' if item['n_tokens'] == 1 else 'multi')
    choices = item['choices']
    assert len(choices) == NUM_CHOICES.get(item['subtask'], 4)
    assert len(set(choices)) == len(choices)
    assert all(c.startswith(' ') and not c.startswith('  ') for c in choices)
    assert choices[item['gold']] == answer
    assert choices.count(answer) == 1


def test_answers_correct_by_construction():
    failures = []
    for item in ALL_ITEMS:
        try:
            check_item(item)
        except AssertionError as e:
            failures.append(f"{item['id']}: {e!r}")
    assert not failures, f'{len(failures)} bad items, e.g. ' + '; '.join(failures[:5])


def test_files_complete_and_ids_unique():
    assert {p.name for p in DATA_DIR.glob('*.jsonl')} == {f'{s}_{t}.jsonl' for s, t in TEST_ITEMS} | {'dev.jsonl'}
    ids = [d['id'] for d in ALL_ITEMS]
    assert len(ids) == len(set(ids))
    for (sub, split), items in TEST_ITEMS.items():
        assert items, f'{sub}/{split} has no items'
        assert all(d['subtask'] == sub and d['split'] == split and d['fold'] == 'test' for d in items)
        assert sum(d['subtask'] == sub and d['split'] == split for d in DEV_ITEMS) > 0


def test_no_duplicate_items():
    keys = [(d['subtask'], d['query'], tuple(d['choices'])) for d in ALL_ITEMS]
    assert len(keys) == len(set(keys))
    for sub in SUBTASKS:  # dev (few-shot) words never appear in the subtask's test items
        test_words = {d['word'] for (s, _), items in TEST_ITEMS.items() if s == sub for d in items}
        assert not test_words & {d['word'] for d in DEV_ITEMS if d['subtask'] == sub}


@pytest.mark.parametrize('key', list(TEST_ITEMS), ids=lambda k: f'{k[0]}-{k[1]}')
def test_gold_positions_balanced(key):
    items = TEST_ITEMS[key]
    counts = Counter(d['gold'] for d in items)
    assert set(counts) == set(range(NUM_CHOICES.get(key[0], 4)))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_splits_length_matched():
    """Each single-token item i has a multi-token twin i with a word of the same length."""
    for sub in SUBTASKS:
        single, multi = TEST_ITEMS[sub, 'single'], TEST_ITEMS[sub, 'multi']
        assert len(single) == len(multi)
        assert [len(d['word']) for d in single] == [len(d['word']) for d in multi]
        assert [d['gold'] for d in single] == [d['gold'] for d in multi]


def test_task_yamls_cover_all_subtasks():
    names = {p.stem for p in TASKS_DIR.glob('charbench_*_*.yaml')} - {'charbench_single', 'charbench_multi'}
    assert names == {f'charbench_{s}_{t}' for s, t in TEST_ITEMS}
    for sub, split in TEST_ITEMS:
        cfg = yaml.safe_load((TASKS_DIR / f'charbench_{sub}_{split}.yaml').read_text())
        assert cfg['dataset_kwargs'] == {'subtask': sub, 'split': split}
        assert cfg['metadata']['chance'] == chance(sub) == 1 / NUM_CHOICES.get(sub, 4)


def wordlist_problem() -> str | None:
    """Why the committed items cannot be regenerated here, or None."""
    if not os.path.exists(DEFAULT_WORDLIST):
        return f'{DEFAULT_WORDLIST} missing: `apt-get install wamerican` to check regeneration'
    if sha256_file(DEFAULT_WORDLIST) != WORDLIST_SHA256:
        return f'{DEFAULT_WORDLIST} is not wamerican 2020.12.07-2 (sha256 differs)'
    return None


def test_generator_reproduces_committed_files(tmp_path):
    problem = wordlist_problem()
    if problem and os.environ.get('CI'):
        pytest.fail(f'{problem}; .ci/run installs it, so CI must run this test')
    if problem:
        pytest.skip(problem)
    main(['--out', str(tmp_path)])
    produced = sorted(p.name for p in tmp_path.iterdir())
    assert produced == sorted(p.name for p in DATA_DIR.glob('*.jsonl'))
    for name in produced:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


class RandomLM(LM):
    """An lm-eval model whose log-likelihoods are seeded random numbers."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.rng = random.Random(seed)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(-10 * self.rng.random(), False) for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_random_model_scores_near_chance():
    results = lm_eval.simple_evaluate(
        model=RandomLM(),
        tasks=['charbench'],
        task_manager=build_task_manager(['charbench']),
        bootstrap_iters=0,
        log_samples=False,
        random_seed=None,
        numpy_random_seed=None,
        torch_random_seed=None,
        fewshot_random_seed=None,
    )['results']
    for (sub, split), items in TEST_ITEMS.items():
        res = results[f'charbench_{sub}_{split}']
        p = chance(sub)
        tolerance = 4 * math.sqrt(p * (1 - p) / len(items))  # 4 standard errors
        for metric in ('acc,none', 'acc_norm,none'):
            assert abs(res[metric] - p) < tolerance, (sub, split, metric, res[metric], p)
    for group in ('charbench', 'charbench_single', 'charbench_multi'):
        assert group in results


def hub_like_tokenizer(tokenizer) -> PackagedLlama3Tokenizer:
    """The packaged tokenizer with the hub tokenizer's post-processor, which prepends BOS."""
    hub = PackagedLlama3Tokenizer()
    hub.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f'{LLAMA3_BOS} $A', special_tokens=[(LLAMA3_BOS, tokenizer.bos_token_id)]),
    ])
    return hub


def word_tokens_in_query(encoding, item: dict) -> int:
    """Tokens of the encoded query that cover ``" " + word`` (each prompt has the word after ``word ``);
    the word's first and last characters must be token boundaries."""
    start = item['query'].index(f"word {item['word']}") + len('word')
    end = start + 1 + len(item['word'])
    covering = [(s, e) for s, e in encoding.offsets if s < end and e > start]
    assert covering[0][0] == start and covering[-1][1] == end, (item['id'], covering)
    return len(covering)


def test_single_multi_split_is_the_llama3_token_count(tokenizer):
    """Recount every word with the Llama-3 tokenizer, standalone (``" " + word``, as the README defines
    the split) and inside its prompt, with and without the hub tokenizer's BOS."""
    standalone = tokenizer([' ' + d['word'] for d in ALL_ITEMS], add_special_tokens=False).input_ids
    hub = hub_like_tokenizer(tokenizer)
    assert hub('x').input_ids[0] == tokenizer.bos_token_id and tokenizer('x').input_ids[0] != tokenizer.bos_token_id
    in_prompt = {}
    for name, tok in (('packaged', tokenizer), ('hub', hub)):
        encodings = tok([d['query'] for d in ALL_ITEMS], return_offsets_mapping=True)
        in_prompt[name] = [word_tokens_in_query(e, d) for e, d in zip(encodings.encodings, ALL_ITEMS)]
    counts = [len(ids) for ids in standalone]
    assert in_prompt['packaged'] == in_prompt['hub'] == counts
    wrong = [(d['id'], d['n_tokens'], n) for d, n in zip(ALL_ITEMS, counts)
             if d['n_tokens'] != n or d['split'] != ('single' if n == 1 else 'multi')]
    assert not wrong, f'{len(wrong)} items with a wrong token count or split, e.g. {wrong[:5]}'
    assert 1 in counts and max(counts) > 2
