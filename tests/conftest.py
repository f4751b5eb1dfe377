"""Shared fixtures: the real Llama-3 tokenizer and its byte vocabulary, and a small MDS set."""

from __future__ import annotations

import os

# The README runs the suite in two pytest-xdist workers (the CI machine has 2 cores); each worker,
# and every training it starts (the variable is inherited), then uses one OpenMP/torch thread
# instead of two per process on two cores. Set before torch is first imported.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ.setdefault('OMP_NUM_THREADS', '1')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from streaming import MDSWriter  # noqa: E402

from prefix_composer.objectives.targets import OBJECTIVE_PARAMETERS, ObjectiveSpec  # noqa: E402
from prefix_composer.objectives.vocab import token_byte_strings  # noqa: E402
from prefix_composer.tokenizer import PackagedLlama3Tokenizer  # noqa: E402

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


@pytest.fixture(autouse=True)
def no_process_group_left_behind():
    """Every test starts without a default process group, whatever ran before it in this process:
    an in-process ``train.py`` run (Composer's ``initialize_dist``) leaves one, and the ranks that
    scripts/bench_lm_eval.py forks would inherit it ("initialize the default process group twice")."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
