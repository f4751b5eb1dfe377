"""Spelling probes: the probe tokens of the real vocabulary, a planted letter code read back near
perfectly, a random embedding at the majority baseline, the callback's records at batch 0 (the
untrained baseline) and at its evaluations, bad settings refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lm_eval_helpers import train_tiny, write_local_tasks
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.evaluation.records import read_records, records_by_batch
from prefix_composer.objectives import token_byte_strings
from prefix_composer.evaluation.spelling_probes import LETTERS, PROBES, macro_accuracy, probe_tokens, spelling_probes

TOKENS = 300


@pytest.fixture(scope='module')
def words(byte_vocab):
    return probe_tokens(*byte_vocab, TOKENS, seed=0)


def test_probe_tokens_are_ascii_letter_pieces_with_an_optional_leading_space(byte_vocab, tokenizer):
    pieces, specials = byte_vocab
    every = probe_tokens(pieces, specials, None, seed=0)
    for i, piece in enumerate(pieces):
        expected = i not in specials and re.fullmatch(rb' ?[A-Za-z]+', piece) is not None
        assert (i in every) == expected
    person = tokenizer(' person', add_special_tokens=False).input_ids
    assert every[person[0]] == 'person' and len(every) > 50_000
    drawn = probe_tokens(pieces, specials, TOKENS, seed=0)
    assert len(drawn) == TOKENS and set(drawn) < set(every) and drawn == probe_tokens(pieces, specials, TOKENS, seed=0)


def planted_embedding(words: dict[int, str], vocab: int, noise: float, seed: int = 0) -> torch.Tensor:
    """Rows of the probe tokens: [contains a-z, first letter one-hot, length bucket one-hot] + noise."""
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((vocab, 64)) * noise
    for token, w in words.items():
        embedding[token, [LETTERS.index(c) for c in set(w)]] += 1.0
        embedding[token, 26 + LETTERS.index(w[0])] += 1.0
        embedding[token, 52 + (0 if len(w) == 1 else 1 if len(w) <= 3 else 2 if len(w) <= 6 else 3)] += 1.0
    return torch.from_numpy(embedding)


def test_a_planted_letter_code_is_read_back_and_a_random_embedding_scores_the_majority(words, byte_vocab):
    vocab = len(byte_vocab[0])
    items, majority = spelling_probes(planted_embedding(words, vocab, noise=0.1), words, folds=3, seed=0)
    planted = macro_accuracy(items)
    assert all(planted[p] > 0.97 for p in PROBES), planted
    assert sorted({i['doc_id'] for i in items}) == sorted(words) and len(items) == 3 * TOKENS

    items, same_majority = spelling_probes(torch.randn(vocab, 8, generator=torch.Generator().manual_seed(1)), words,
                                           folds=3, seed=0)
    random = macro_accuracy(items)
    assert same_majority == majority  # the baseline depends on the labels and folds only
    # majority, computed here: per held-out fold, the most frequent class of the other folds
    assert 0.7 < majority['probe_contains'] < 0.9 and 0.05 < majority['probe_first_letter'] < 0.2
    for probe in PROBES:  # no better than the majority (a leak of held-out labels would lift it), not far below
        assert majority[probe] - 0.1 < random[probe] < majority[probe] + 0.02, (probe, random, majority)


def test_callback_records_the_untrained_baseline_at_batch_0_and_the_probes_at_each_evaluation(tokenizer, tmp_path):
    tasks_dir = tmp_path / 'tasks'
    write_local_tasks(tasks_dir)
    run = tmp_path / 'run'
    callback = LMEvalCallback(tasks=['local_winogrande'], interval='2ba', limit=2, batch_size=4,
                              include_path=[str(tasks_dir)], probes={'max_tokens': 100, 'folds': 2})
    model, _ = train_tiny(tokenizer, '2ba', callbacks=[callback], save_folder=str(run / 'checkpoints'), save_interval='2ba')
    folder = run / 'probes'
    assert sorted(records_by_batch(str(folder))) == [0, 2]
    start, end = read_records(str(folder / 'ba0.jsonl.gz')), read_records(str(folder / 'ba2.jsonl.gz'))
    assert start.header['settings'] == end.header['settings'] and end.header['settings']['kind'] == 'probes'
    assert end.header['settings']['max_tokens'] == 100 and end.header['settings']['folds'] == 2
    untrained = macro_accuracy(start.items)
    assert {p: b['acc']['untrained'] for p, b in end.header['baselines'].items()} == untrained
    assert all(b['acc']['untrained'] is None for b in start.header['baselines'].values())
    # the batch-2 items are the probes of the final embedding
    words = probe_tokens(*token_byte_strings(tokenizer), 100, 0)
    items, _ = spelling_probes(model.model.get_input_embeddings().weight, words, folds=2, seed=0)
    assert [(i['task'], i['doc_id'], i['metrics']) for i in sorted(items, key=lambda i: (i['task'], i['doc_id']))] == \
        [(i['task'], i['doc_id'], i['metrics']) for i in end.items]


@pytest.mark.parametrize('probes, message', [
    ({'folds': 1}, r'callbacks\.lm_eval\.probes\.folds = 1 is invalid'),
    ({'max_tokens': 10}, r'callbacks\.lm_eval\.probes\.max_tokens = 10 is invalid'),
    ({'fold': 5}, r"callbacks\.lm_eval\.probes has unknown keys \['fold'\]"),
])
def test_bad_probe_settings_are_refused_when_the_callback_is_built(probes, message, tmp_path):
    write_local_tasks(tmp_path)
    with pytest.raises(ValueError, match=message):
        LMEvalCallback(tasks=['local_winogrande'], include_path=[str(tmp_path)], probes=probes)


def test_probe_records_past_the_resumed_checkpoint_are_replaced(tokenizer, tmp_path):
    tasks_dir = tmp_path / 'tasks'
    write_local_tasks(tasks_dir)
    run, folder = tmp_path / 'run', tmp_path / 'run' / 'probes'

    def train(interval: str, **kwargs):
        callback = LMEvalCallback(tasks=['local_winogrande'], interval=interval, limit=2, batch_size=4,
                                  include_path=[str(tasks_dir)], probes={'max_tokens': 100, 'folds': 2})
        train_tiny(tokenizer, '4ba', callbacks=[callback], save_folder=str(run / 'checkpoints'), save_interval='2ba',
                   run_name='r', **kwargs)

    train('1ba')
    straight = (folder / 'ba4.jsonl.gz').read_bytes()
    checkpoints = run / 'checkpoints'
    (checkpoints / 'ep0-ba4-rank0.pt').unlink()
    (checkpoints / 'latest-rank0.pt').unlink()
    (checkpoints / 'latest-rank0.pt').symlink_to('ep0-ba2-rank0.pt')
    (folder / 'ba4.jsonl.gz').write_bytes(b'written by the preempted run')
    train('2ba', autoresume=True)  # resumes at batch 2: ba3 (no evaluation at 3 any more) is gone, ba4 rewritten
    assert sorted(records_by_batch(str(folder))) == [0, 1, 2, 4]
    assert (folder / 'ba4.jsonl.gz').read_bytes() == straight  # the untrained baseline came from the checkpoint
