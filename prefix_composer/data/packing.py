"""Pack a token stream into fixed-length sequences, routing whole documents to val then train.

Per split the stream is ``[bos] + ids(doc_1) + [eos] + [bos] + ids(doc_2) + [eos] + ...`` in
document order, cut into consecutive sequences of exactly ``seq_len`` tokens; the final partial
sequence is dropped and its length reported (``dropped_tail_tokens``), so
``tokens = sequences * seq_len + dropped``.

Split rule: documents go to val, in stream order, while val holds fewer than ``val_tokens`` tokens
(BOS and EOS included); the document that reaches ``val_tokens`` is val's last, all later ones are
train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from prefix_composer.data.parallel_tokenize import TokenizedBatch


@dataclass
class SequencePacker:
    """Concatenates token pieces and calls ``write(sequence)`` for each full ``seq_len`` sequence."""

    seq_len: int
    write: Callable[[np.ndarray], None]
    documents: int = 0
    tokens: int = 0
    sequences: int = 0
    carry: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))

    def add(self, ids: np.ndarray, documents: int) -> None:
        self.documents += documents
        self.tokens += len(ids)
        buffer = np.concatenate([self.carry, ids]) if len(self.carry) else ids
        full = len(buffer) // self.seq_len
        for i in range(full):
            self.write(buffer[i * self.seq_len:(i + 1) * self.seq_len])
        self.sequences += full
        self.carry = buffer[full * self.seq_len:].copy()

    def stats(self) -> dict:
        return {'documents': self.documents, 'tokens': self.tokens, 'sequences': self.sequences,
                'dropped_tail_tokens': len(self.carry)}


@dataclass
class SplitRouter:
    """Sends each tokenised document to ``val`` until it holds ``val_tokens``, then to ``train``."""

    val_tokens: int
    val: SequencePacker
    train: SequencePacker

    def add(self, batch: TokenizedBatch) -> None:
        to_val = 0
        if self.val.tokens < self.val_tokens:
            tokens_before = self.val.tokens + np.cumsum(batch.doc_tokens) - batch.doc_tokens
            to_val = int(np.searchsorted(tokens_before, self.val_tokens, side='left'))
        cut = int(batch.doc_tokens[:to_val].sum())
        if to_val:
            self.val.add(batch.ids[:cut], to_val)
        if to_val < len(batch.doc_tokens):
            self.train.add(batch.ids[cut:], len(batch.doc_tokens) - to_val)
