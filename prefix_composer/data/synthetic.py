"""Deterministic synthetic web-like documents for tests and the data benchmark.

Words are drawn with Zipf-like weights from the ASCII word pieces of a tokenizer's vocabulary
(lower id ~ more frequent, as BPE merges go) plus invented words that split into several tokens;
they form capitalised sentences and paragraphs of log-normally distributed length. A share of
documents carries non-ASCII text (accents, Greek, Cyrillic, CJK, emoji) that the ASCII rule removes.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

NON_ASCII_SNIPPETS = ('café', 'naïve', 'Zürich', 'São Paulo', 'crème brûlée', '日本語の文章', '中文文本',
                      '🎉', '👍🏽', 'Ελληνικά', 'Привет', '— ', '“quoted”', '…', 'Ωμέγα', '한국어')
INVENTED_SHARE = 0.05


def vocabulary_words(token_bytes: Sequence[bytes], specials: set[int]) -> list[str]:
    """``' word'`` pieces of a byte-level vocabulary (leading space, ASCII letters/digits), in id order."""
    words = []
    for i, piece in enumerate(token_bytes):
        if i not in specials and len(piece) > 1 and piece[:1] == b' ' and piece[1:].isalnum() and piece.isascii():
            words.append(piece.decode('ascii'))
    return words


class SyntheticCorpus:
    """Documents from ``words`` with a fixed seed: the same arguments give the same documents."""

    def __init__(self, words: Sequence[str], seed: int, mean_words: float = 600.0, non_ascii_share: float = 0.1):
        if not words:
            raise ValueError('SyntheticCorpus needs a non-empty word list.')
        self.rng = np.random.default_rng(seed)
        syllables = [c + v for c in 'bcdfghklmnprstvz' for v in 'aeiou']
        invented = [' ' + ''.join(syllables[i] for i in self.rng.integers(len(syllables), size=k))
                    for k in self.rng.integers(2, 6, size=2000)]
        self.words = np.array(list(words) + invented, dtype=object)
        weights = 1.0 / (np.arange(len(words)) + 20.0)
        weights = np.concatenate([weights / weights.sum() * (1 - INVENTED_SHARE),
                                  np.full(len(invented), INVENTED_SHARE / len(invented))])
        self.cdf = np.cumsum(weights)
        self.cdf[-1] = 1.0
        self.log_mean = np.log(mean_words) - 0.5 * 0.8 ** 2
        self.non_ascii_share = non_ascii_share

    def _sentence(self, n: int) -> str:
        text = ''.join(self.words[np.searchsorted(self.cdf, self.rng.random(n), side='right')]).lstrip()
        return text[:1].upper() + text[1:] + ('?' if self.rng.random() < 0.1 else '.')

    def document(self) -> str:
        n_words = max(3, int(self.rng.lognormal(self.log_mean, 0.8)))
        lengths = self.rng.integers(4, 24, size=n_words // 4 + 1)
        lengths = lengths[:max(1, int(np.searchsorted(np.cumsum(lengths), n_words)))]
        sentences = [self._sentence(int(n)) for n in lengths]
        if self.rng.random() < self.non_ascii_share:
            for _ in range(int(self.rng.integers(1, 4))):
                i = int(self.rng.integers(len(sentences)))
                snippet = NON_ASCII_SNIPPETS[int(self.rng.integers(len(NON_ASCII_SNIPPETS)))]
                sentences[i] = f'{sentences[i][:-1]} {snippet}{sentences[i][-1]}'
        paragraphs = [' '.join(sentences[i:i + 5]) for i in range(0, len(sentences), 5)]
        return '\n\n'.join(paragraphs)

    def documents(self, count: int) -> list[str]:
        return [self.document() for _ in range(count)]

    def until_bytes(self, total_bytes: int) -> Iterator[str]:
        """Documents until their UTF-8 size reaches ``total_bytes``."""
        size = 0
        while size < total_bytes:
            doc = self.document()
            size += len(doc.encode('utf-8'))
            yield doc
