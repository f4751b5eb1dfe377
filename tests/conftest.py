"""Shared fixtures: the real Llama-3 tokenizer and its byte vocabulary, and a small MDS set."""

from __future__ import annotations

import numpy as np
import pytest
from streaming import MDSWriter

from prefix_composer.objectives.targets import OBJECTIVE_PARAMETERS, ObjectiveSpec
from prefix_composer.objectives.vocab import token_byte_strings
from prefix_composer.tokenizer import PackagedLlama3Tokenizer

# Varied English, some of it with tokens that have byte prefixes (" personality", " strawberry").
SAMPLE_TEXT = (
    'The personality of a strawberry farmer is shaped by weather, soil and patience. '
    'Researchers measured how language models spell words letter by letter, and found that '
    'tokenization hides characters inside multi-byte pieces. Personal computers, personnel files '
    'and personalized medicine share a prefix but not a meaning. '
)


def objective_spec(objective: str, **params) -> ObjectiveSpec:
    """``ObjectiveSpec`` of ``objective`` with the ``params`` it reads (the others would be refused)."""
    return ObjectiveSpec(objective, **{k: v for k, v in params.items() if k in OBJECTIVE_PARAMETERS[objective]})


@pytest.fixture(scope='session')
def tokenizer():
    return PackagedLlama3Tokenizer()


@pytest.fixture(scope='session')
def byte_vocab(tokenizer):
    return token_byte_strings(tokenizer)


def write_token_mds(folder, token_ids: list[int], seq_len: int) -> int:
    """Write consecutive ``seq_len`` windows of ``token_ids`` as llm-foundry ``text`` samples."""
    n = len(token_ids) // seq_len
    with MDSWriter(out=str(folder), columns={'tokens': 'ndarray:int32'}) as writer:
        for i in range(n):
            writer.write({'tokens': np.asarray(token_ids[i * seq_len:(i + 1) * seq_len], dtype=np.int32)})
    return n


@pytest.fixture(scope='session')
def tiny_mds(tmp_path_factory, tokenizer):
    """train/val MDS splits of 32-token sequences from ``SAMPLE_TEXT`` (real Llama-3 ids)."""
    root = tmp_path_factory.mktemp('mds')
    ids = (tokenizer(SAMPLE_TEXT, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]) * 40
    write_token_mds(root / 'train', ids[: len(ids) * 3 // 4], 32)
    write_token_mds(root / 'val', ids[len(ids) * 3 // 4:], 32)
    return root
