"""The raw byte string of every vocabulary id: the input of the prefix objectives.

Prefixes are found in byte space (docs/design.md): a byte-level BPE piece such as ``'Ġperson'``
is mapped back to raw bytes (``b' person'``) through GPT-2's byte<->unicode table, never
decoded to ``str``. Added/special tokens (``<|begin_of_text|>`` ...) are flagged so that they
never act as prefix candidates.
"""

from __future__ import annotations

import base64
import gzip
import json
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

BYTE_VOCAB_FORMAT = 'prefix-composer byte vocabulary v1'


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte 0..255 to a printable unicode character."""
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(
        range(ord('®'), ord('ÿ') + 1),
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of added/special tokens: never prefix candidates, one-hot as gold under prefix objectives."""
    return set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)


def token_byte_strings(tokenizer: PreTrainedTokenizerBase) -> tuple[list[bytes], set[int]]:
    """Raw bytes of every id ``0 .. len(tokenizer)-1`` and the set of special ids.

    Regular pieces are byte-level BPE strings mapped back to bytes; special tokens get the
    UTF-8 of their text (only used for reporting: they never take part in prefix matching).
    A tokenizer that is not byte-level BPE is an error, not a silent approximation.
    """
    specials = special_token_ids(tokenizer)
    table = unicode_to_bytes()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if piece is None:
            raise ValueError(f'Tokenizer id {i} has no piece; ids must be contiguous 0..len(tokenizer)-1.')
        if i in specials:
            out.append(piece.encode('utf-8'))
            continue
        try:
            out.append(bytes(table[c] for c in piece))
        except KeyError as e:
            raise ValueError(
                f'Token {i} {piece!r} has character {e.args[0]!r} outside the GPT-2 byte alphabet: '
                'prefix-aware targets need a byte-level BPE tokenizer (e.g. Llama-3).',
            ) from None
    return out, specials


def write_byte_vocab(path: str, pieces: list[bytes], specials: set[int]) -> None:
    """Save ``token_byte_strings``' output as gzipped JSON (pieces base64-encoded), so that a machine
    without the tokenizer package can build the same target tables (``scripts/gpu_check.py``)."""
    record = {'format': BYTE_VOCAB_FORMAT, 'pieces': [base64.b64encode(p).decode('ascii') for p in pieces],
              'specials': sorted(specials)}
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        json.dump(record, f)


def read_byte_vocab(path: str) -> tuple[list[bytes], set[int]]:
    """The ``(pieces, specials)`` written by ``write_byte_vocab``."""
    try:
        with gzip.open(path, 'rt', encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'{path} is not a byte-vocabulary file written by write_byte_vocab ({e}).') from None
    if not isinstance(record, dict) or record.get('format') != BYTE_VOCAB_FORMAT:
        raise ValueError(f'{path}: expected format {BYTE_VOCAB_FORMAT!r}; rewrite it with write_byte_vocab.')
    return [base64.b64decode(p) for p in record['pieces']], set(record['specials'])
