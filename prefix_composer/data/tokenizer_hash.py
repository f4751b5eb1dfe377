"""A tokenizer's identity: the sha256 of its content, recorded in and checked against data manifests."""

from __future__ import annotations

import hashlib
import json

from transformers import PreTrainedTokenizerBase


def tokenizer_content_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's content (vocab, merges, added tokens, normalizer, pre-tokenizer).

    Two tokenizers with the same hash map every text to the same ids, whatever their name or
    path. Truncation/padding state is left out: calling the tokenizer with ``truncation=True``
    changes its serialized form but not its vocabulary.
    """
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise TypeError(f'{type(tokenizer).__name__} is not a fast (Rust-backed) tokenizer; a fast tokenizer is required.')
    content = json.loads(backend.to_str())
    content.pop('truncation', None)
    content.pop('padding', None)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode('utf-8')).hexdigest()
