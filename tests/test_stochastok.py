"""StochasTok: the split table on the real Llama-3 vocabulary, the expansion against the reference
algorithm (one attempt at a time, as ``StochastokProcessor.expand``), rank invariance against
Streaming's real partition, and the ``stochastok`` algorithm in ``train.py`` runs (test_preemption resumes
a StochasTok run after SIGKILLs bitwise)."""

from __future__ import annotations

import csv
import glob
import os
import random
import sys
import sysconfig

import numpy as np
import pytest
import torch
from composer.core import Event
from streaming.base.partition import get_partitions

from prefix_composer.objectives.splits import build_split_table, expand
from prefix_composer.training import stochastok as stochastok_module
from prefix_composer.training.stochastok import StochasTok, sample_positions
from test_preemption import MAX_BATCHES, PYTHON, REPO, SMOKE_OVERRIDES, finish, straight
from test_preemption import start as start_training

WIDTH = 256


@pytest.fixture(scope='module')
def table(byte_vocab):
    return build_split_table(*byte_vocab)


@pytest.fixture(scope='module')
def real_ids(tokenizer) -> list[int]:
    """Llama-3 ids of English text on every machine: the LICENSE files of the installed packages."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()['purelib'], '*.dist-info', 'LICENSE*')))
    text = ''.join(open(f, encoding='ascii', errors='ignore').read() for f in files if os.path.isfile(f))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) >= 64 * WIDTH
    return ids


def rows(ids: list[int], count: int) -> torch.Tensor:
    return torch.tensor(ids[:count * WIDTH]).reshape(count, WIDTH)


def joined(pieces, ids) -> bytes:
    return b''.join(pieces[i] for i in ids)


# -- the split table -------------------------------------------------------------------------------

def test_split_table_is_every_split_into_two_non_special_tokens(table, byte_vocab):
    """Each pair concatenates to its token, and the table equals a byte-by-byte dictionary search."""
    pieces, specials = byte_vocab
    index = {p: i for i, p in enumerate(pieces) if i not in specials}
    expected_total = 0
    for t, p in enumerate(pieces):
        expected = [] if t in specials else [(index[p[:j]], index[p[j:]]) for j in range(1, len(p))
                                              if p[:j] in index and p[j:] in index]
        assert table.splits_of(t) == expected, t
        expected_total += len(expected)
    left, right = table.left.tolist(), table.right.tolist()
    owner = np.repeat(np.arange(len(pieces)), table.counts.numpy())
    assert all(pieces[a] + pieces[b] == pieces[t] for a, b, t in zip(left, right, owner))
    assert not (set(left) | set(right) | set(owner.tolist())) & specials
    assert len(left) == expected_total > 200_000
    assert table.splits_of(index[b' personality']).count((index[b' person'], index[b'ality'])) == 1


# -- the expansion ---------------------------------------------------------------------------------

def reference_expand(ids: list[int], table, expand_prop: float, rng: random.Random) -> tuple[list[int], int]:
    """``StochastokProcessor.expand``: int(n * p) attempts, each at a uniform position of the current sequence."""
    splits = 0
    for _ in range(int(len(ids) * expand_prop)):
        i = rng.randrange(len(ids))
        options = table.splits_of(ids[i])
        if options:
            ids = ids[:i] + list(rng.choice(options)) + ids[i + 1:]
            splits += 1
    return ids, splits


@pytest.mark.parametrize('expand_prop', [0.1, 0.5])
def test_realized_proportion_matches_the_reference_on_real_text(table, real_ids, expand_prop):
    """Same attempts (int(n p)); mean splits per sample within 4 standard errors of the reference's."""
    batch = rows(real_ids, 64)
    out = expand(batch, torch.ones_like(batch, dtype=torch.bool), table, expand_prop, 17, torch.arange(64))
    assert out.attempts.tolist() == [int(WIDTH * expand_prop)] * 64
    rng = random.Random(0)
    reference = np.array([reference_expand(row, table, expand_prop, rng)[1] for row in batch.tolist() for _ in range(4)],
                         dtype=float)
    ours = out.splits.numpy().astype(float)
    se = np.sqrt(reference.var(ddof=1) / len(reference) + ours.var(ddof=1) / len(ours))
    assert abs(ours.mean() - reference.mean()) < 4 * se + 1e-9, (ours.mean(), reference.mean(), se)
    assert 0.6 * expand_prop < ours.mean() / WIDTH <= expand_prop  # not every drawn token has a split
    assert (out.splits <= out.attempts).all()


def test_expanded_sequence_decodes_to_the_original_text_up_to_the_cut(table, real_ids, byte_vocab, tokenizer):
    pieces, _ = byte_vocab
    batch = rows(real_ids, 16)
    out = expand(batch, torch.ones_like(batch, dtype=torch.bool), table, 0.3, 5, torch.arange(16))
    assert out.input_ids.shape == batch.shape and (out.splits > 0).all()
    for original, expanded, source, dropped in zip(batch.tolist(), out.input_ids.tolist(), out.source.tolist(),
                                                   out.dropped.tolist()):
        text, expanded_text = joined(pieces, original), joined(pieces, expanded)
        assert text.startswith(expanded_text) and expanded != original
        whole = joined(pieces, original[:source[-1]])  # the tokens before the last one that (partly) survived
        assert expanded_text.startswith(whole) and len(expanded_text) <= len(joined(pieces, original[:source[-1] + 1]))
        assert dropped == WIDTH - 1 - source[-1]
        assert tokenizer.decode(original).startswith(tokenizer.decode(expanded))  # ASCII text: whole characters


def test_padding_and_special_tokens_are_never_split_or_drawn(table, real_ids, tokenizer):
    batch = rows(real_ids, 8).clone()
    batch[:, 0] = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 128000
    batch[:, 100] = tokenizer.eos_token_id
    valid = torch.ones_like(batch, dtype=torch.bool)
    valid[:, 200:] = False  # right padding
    batch[:, 200:] = tokenizer.eos_token_id
    out = expand(batch, valid, table, 1.0, 3, torch.arange(8))
    assert out.attempts.tolist() == [200] * 8
    assert (out.input_ids[:, 0] == batch[:, 0]).all() and ((out.source == 0).sum(1) == 1).all()  # BOS whole
    assert ((out.source == 100).sum(1) == 1).all()  # the EOS at 100: one entry, itself
    assert (out.input_ids[out.source == 100] == tokenizer.eos_token_id).all()
    kept = valid.gather(1, out.source)
    assert [len(set(source[k].tolist())) + d for source, k, d in zip(out.source, kept, out.dropped.tolist())] == [200] * 8
    assert (out.splits > 50).all() and (kept.sum(1) == WIDTH).all()  # the text now fills the width
    narrow = expand(batch, valid, table, 0.1, 3, torch.arange(8))  # few splits: padding stays after the text
    kept = valid.gather(1, narrow.source)
    assert (kept[:, 1:] <= kept[:, :-1]).all() and (kept.sum(1) == 200 + narrow.splits).all()


def test_same_sample_same_split_different_seed_different_split(table, real_ids):
    batch = rows(real_ids, 4)
    valid = torch.ones_like(batch, dtype=torch.bool)
    a = expand(batch, valid, table, 0.1, 17, torch.tensor([40, 41, 42, 43]))
    b = expand(batch.flip(0), valid, table, 0.1, 17, torch.tensor([43, 42, 41, 40]))  # other order in the batch
    assert torch.equal(a.input_ids, b.input_ids.flip(0))
    c = expand(batch, valid, table, 0.1, 18, torch.tensor([40, 41, 42, 43]))
    assert not torch.equal(a.input_ids, c.input_ids)


@pytest.mark.parametrize('nodes, ranks_per_node', [(1, 2), (2, 1), (2, 2)])
def test_ranks_together_split_exactly_what_one_rank_splits(table, real_ids, monkeypatch, nodes, ranks_per_node):
    """``sample_positions`` names the sample that Streaming's partition gives each rank, and the ranks'
    expansions of their parts of a global batch equal one rank's expansion of all of it."""
    world, global_batch, b, samples = nodes * ranks_per_node, 8, 3, 4096
    pool = rows(real_ids, 64)
    content = lambda ids: pool[torch.as_tensor(ids, dtype=torch.int64) % len(pool)]  # noqa: E731
    one = get_partitions('relaxed', samples, 1, 1, 1, 1, global_batch, 0)[0, 0, 0, b]  # sample ids of global batch b
    positions = sample_positions(b, global_batch)
    assert positions.tolist() == list(range(b * global_batch, (b + 1) * global_batch))
    valid = torch.ones((global_batch, WIDTH), dtype=torch.bool)
    alone = expand(content(one), valid, table, 0.1, 17, positions)
    by_sample = {int(s): row for s, row in zip(one, alone.input_ids)}

    dealt = get_partitions('relaxed', samples, 1, nodes, ranks_per_node, 1, global_batch // world, 0)
    monkeypatch.setattr(stochastok_module.dist, 'get_world_size', lambda: world)
    monkeypatch.setattr(stochastok_module.dist, 'get_local_world_size', lambda: ranks_per_node)
    seen = []
    for node in range(nodes):
        for rank in range(ranks_per_node):
            monkeypatch.setattr(stochastok_module.dist, 'get_node_rank', lambda: node)
            monkeypatch.setattr(stochastok_module.dist, 'get_local_rank', lambda: rank)
            mine = dealt[node, rank, 0, b]
            positions = sample_positions(b, global_batch // world)
            assert one[positions - b * global_batch].tolist() == mine.tolist()
            part = expand(content(mine), valid[:len(mine)], table, 0.1, 17, positions)
            for s, row in zip(mine, part.input_ids):
                assert torch.equal(row, by_sample[int(s)])
            seen += mine.tolist()
    assert sorted(seen) == sorted(one.tolist())


# -- the algorithm ---------------------------------------------------------------------------------

@pytest.mark.parametrize('value', [-0.1, 1.5, True, '0.1', float('nan')])
def test_bad_expand_prop_is_refused(value):
    with pytest.raises(ValueError, match=r'algorithms\.stochastok\.expand_prop must be a number in \[0, 1\]'):
        StochasTok(expand_prop=value)


def test_only_training_batches_are_split():
    """The algorithm acts at INIT and AFTER_DATALOADER (a training-loop event) only: evaluation and
    lm-eval batches (EVAL_* events, the callback's own forward passes) are never touched."""
    algorithm = StochasTok(0.1)
    assert [e for e in Event if algorithm.match(e, None)] == [Event.INIT, Event.AFTER_DATALOADER]


STOCHASTOK = ['algorithms.stochastok.expand_prop=0.3']


def start(tmp_path, mds, name, extra=STOCHASTOK):
    """``python train.py`` (the launcher is not what these runs test) with StochasTok on."""
    return start_training(tmp_path, mds, name, launcher=PYTHON, overrides=[*SMOKE_OVERRIDES, *extra])


def test_bad_expand_prop_is_refused_before_the_model_is_built(tmp_path, tiny_mds):
    proc = start(tmp_path, tiny_mds, 'bad', ['algorithms.stochastok.expand_prop=1.5'])
    assert finish(proc) != 0
    output = proc.log_path.read_text()
    assert 'algorithms.stochastok.expand_prop must be a number in [0, 1]' in output and 'got 1.5' in output
    assert 'Initializing model' not in output and 'Starting training' not in output


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory, tiny_mds):
    return straight(tmp_path_factory, tiny_mds, 'a', [*SMOKE_OVERRIDES, *STOCHASTOK])


def test_train_run_logs_the_split_columns(straight_run):
    with open(straight_run / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        train = [r for r in csv.DictReader(f) if r['phase'] == 'train']
    assert [int(r['batch']) for r in train] == list(range(1, MAX_BATCHES + 1))
    split_prop = [float(r['stochastok/split_prop']) for r in train]
    assert all(0.15 < p <= 0.3 for p in split_prop) and len(set(split_prop)) > 1  # 4 x 32 tokens: 38 attempts a batch
    assert all(float(r['stochastok/tokens']) == 4 * 32 for r in train)  # packed: every position is text after the cut
    assert all(0 < float(r['stochastok/dropped_tokens']) <= float(r['stochastok/split_prop']) * 128 + 1e-9 for r in train)
    log = (straight_run / 'a.log').read_text()
    assert 'StochasTok expand_prop=0.3: split table of' in log


# -- the run's identity in the records and the report ------------------------------------------------

def test_the_report_tells_stochastok_ce_from_the_ce_baseline():
    from prefix_composer.analysis.families import check_variants, choose_baseline
    from prefix_composer.analysis.rows import objective_label
    from prefix_composer.analysis.runs import Run
    from prefix_composer.evaluation.records import run_identity

    ce = {'objective': 'ce', 'eps': 0.0, 'tau': 1.0, 'support': 'inclusive'}
    split = {'stochastok': {'expand_prop': 0.1}}
    assert 'augmentation' not in run_identity('b000_ce', 17, {}, ce)  # unaugmented records keep their identity
    assert run_identity('stochastok_ce', 17, {}, ce, split)['augmentation'] == split

    def run(name, augmentation, seed=17):
        return Run(folder=f'/runs/{name}', name=name, variant=name.split('_seed')[0], seed=seed, objective=ce, model={},
                   records={}, validation={}, trained_tokens=0, augmentation=augmentation)

    variants = check_variants([run('stochastok_ce', split), run('b000_ce', None)])
    assert choose_baseline(variants, 'ce') == 'b000_ce'
    assert choose_baseline(check_variants([run('stochastok_ce', split)]), 'ce') is None
    assert objective_label(variants['stochastok_ce'][17]).endswith(' + stochastok expand_prop=0.1')
    with pytest.raises(ValueError, match='train different objectives'):
        check_variants([run('stochastok_ce', split), run('stochastok_ce_seed1', None, 18)])


def test_the_demo_trains_a_stochastok_variant_with_its_split_block():
    sys.path.insert(0, os.path.join(REPO, 'scripts'))  # as `python scripts/demo.py` has it
    import demo

    assert demo.augmentation_overrides('stochastok_prefix_unnorm_eps1') == ['algorithms.stochastok.expand_prop=0.1']
    assert demo.augmentation_overrides('prefix_unnorm_eps1') == []
