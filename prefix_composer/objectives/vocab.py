"""The raw byte string of every vocabulary id: the input of the prefix objectives.

Prefixes are found in byte space (DESIGN.md): a byte-level BPE piece such as ``'Ġperson'``
is mapped back to raw bytes (``b' person'``) through GPT-2's byte<->unicode table, never
decoded to ``str``. Added/special tokens (``<|begin_of_text|>`` ...) are flagged so that they
never act as prefix candidates.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import PreTrainedTokenizerBase


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
