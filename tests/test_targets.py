"""Sparse target tables against an independent brute-force construction on the real Llama-3 vocabulary."""

from __future__ import annotations

import math
import random

import pytest
import torch

from prefix_composer.objectives.targets import OBJECTIVES, ObjectiveSpec, build_target_table, strict_prefix_ids

from conftest import objective_spec

EPSILONS = (0.0, 0.1, 1.0)
TAUS = (0.05, 1.0, 2.0)
SUPPORTS = ('inclusive', 'strict')


def brute_force_prefixes(y: int, pieces: list[bytes], specials: set[int]) -> list[int]:
    """P(s) by scanning every id with bytes.startswith (no index, no sorting)."""
    if y in specials:
        return []
    s = pieces[y]
    return [i for i in range(len(pieces)) if i not in specials and 0 < len(pieces[i]) < len(s) and s.startswith(pieces[i])]


def brute_force_target(y: int, prefixes: list[int], pieces: list[bytes], spec: ObjectiveSpec) -> dict[int, float]:
    """Non-zero masses of q, written straight from docs/design.md's table (label smoothing: see below)."""
    eps, s = spec.eps, pieces[y]
    if spec.objective == 'ce' or not prefixes:
        return {y: 1.0}
    if spec.objective == 'prefix_simple':
        return {**{i: eps / len(prefixes) for i in prefixes}, y: 1 - eps}
    support = prefixes + [y] if spec.support == 'inclusive' else prefixes
    norm = len(s) if spec.objective == 'prefix_softmax_norm' else 1
    scores = [len(pieces[i]) / norm / spec.tau for i in support]
    top = max(scores)
    z = sum(math.exp(v - top) for v in scores)
    q = {i: eps * math.exp(v - top) / z for i, v in zip(support, scores)}
    q[y] = q.get(y, 0.0) + 1 - eps
    return q


def sparse_row(table, y: int) -> dict[int, float]:
    """The table's sparse part of row y as {id: summed weight}, zero weights dropped."""
    row: dict[int, float] = {}
    for i, w in zip(table.ids[y].tolist(), table.weights[y].tolist()):
        row[i] = row.get(i, 0.0) + w
    return {i: w for i, w in row.items() if w != 0.0}


def dense_row(table, y: int, vt: int) -> torch.Tensor:
    row = torch.zeros(vt, dtype=torch.float64)
    row.index_add_(0, table.ids[y], table.weights[y].double())
    row[: table.uniform_count] += table.uniform_mass
    return row


@pytest.fixture(scope='module')
def gold_ids(tokenizer, byte_vocab):
    pieces, specials = byte_vocab
    rng = random.Random(0)
    picked = [tokenizer.convert_tokens_to_ids(t) for t in ('Ġpersonality', 'Ġstrawberry', 'a', '<|begin_of_text|>')]
    picked.append(max(range(len(pieces)), key=lambda i: len(pieces[i]) if i not in specials else 0))  # longest piece
    return picked + rng.sample(range(len(pieces)), 200)


def distinct_specs() -> list[ObjectiveSpec]:
    """Every objective x eps x tau x support, without the combinations an objective ignores."""
    specs = []
    for objective in OBJECTIVES:
        softmax = objective in ('prefix_softmax', 'prefix_softmax_norm')
        for eps in EPSILONS if objective != 'ce' else (0.0,):
            for tau in TAUS if softmax else (1.0,):
                for support in SUPPORTS if softmax else ('inclusive',):
                    specs.append(ObjectiveSpec(objective, eps, tau, support))
    return specs


@pytest.fixture(scope='module')
def brute_prefixes(gold_ids, byte_vocab):
    pieces, specials = byte_vocab
    prefixes = {y: brute_force_prefixes(y, pieces, specials) for y in gold_ids}
    assert any(len(p) > 3 for p in prefixes.values()) and any(not p for p in prefixes.values())
    return prefixes


@pytest.mark.parametrize('spec', [s for s in distinct_specs() if s.objective != 'label_smoothing'], ids=str)
def test_objective_matches_brute_force(spec, brute_prefixes, byte_vocab):
    pieces, specials = byte_vocab
    table = build_target_table(pieces, specials, spec)
    assert table.ids.shape[0] == len(pieces) and int(table.ids.max()) < len(pieces)
    assert table.uniform_mass == 0.0
    for y, prefixes in brute_prefixes.items():
        got, expected = sparse_row(table, y), brute_force_target(y, prefixes, pieces, spec)
        assert set(got) <= set(expected), (y, pieces[y])
        for i, mass in expected.items():
            assert got.get(i, 0.0) == pytest.approx(mass, abs=1e-6), (y, pieces[y], i)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize('eps', EPSILONS)
def test_label_smoothing_matches_dense_formula(eps, gold_ids, byte_vocab):
    """q_y = 1-eps, every other id of the tokenizer eps/(|V|-1) (not torch's eps/|V|), dense over all ids."""
    pieces, specials = byte_vocab
    vt = len(pieces)
    table = build_target_table(pieces, specials, ObjectiveSpec('label_smoothing', eps))
    for y in gold_ids[:8]:  # dense over the whole vocabulary for a few ids, special and hand-picked included
        expected = torch.full((vt,), eps / (vt - 1), dtype=torch.float64)
        expected[y] = 1 - eps
        assert torch.allclose(dense_row(table, y, vt), expected, atol=1e-7, rtol=0), y
    c = table.uniform_mass
    assert c == pytest.approx(eps / (vt - 1)) and (table.uniform_count == vt or c == 0)
    for y in gold_ids:  # the closed form for the rest: uniform c on every id plus a sparse correction on y
        assert {i: w + c for i, w in sparse_row(table, y).items()} == pytest.approx({y: 1 - eps})


def table_for(spec: ObjectiveSpec, byte_vocab):
    return build_target_table(*byte_vocab, spec)


def test_hand_picked_tokens(tokenizer, byte_vocab):
    pieces, specials = byte_vocab
    vt = len(pieces)
    ids = tokenizer.convert_tokens_to_ids
    y = ids('Ġpersonality')
    row = dense_row(table_for(ObjectiveSpec('prefix_softmax', 1.0, 1.0), byte_vocab), y, vt)
    # softmax over byte lengths of R(" personality"): " person" (7 bytes) vs " personal" (9 bytes) = e^-2
    assert row[ids('Ġperson')] / row[ids('Ġpersonal')] == pytest.approx(math.exp(-2), rel=1e-5)
    assert row[y] == pytest.approx(1 / sum(math.exp(len(pieces[i]) - len(pieces[y])) for i in row.nonzero().flatten().tolist()), rel=1e-5)
    simple_table = table_for(ObjectiveSpec('prefix_simple', 0.1), byte_vocab)
    simple = dense_row(simple_table, y, vt)
    n_prefix = int((simple > 0).sum()) - 1
    assert simple[y] == pytest.approx(0.9) and simple[ids('Ġperson')] == pytest.approx(0.1 / n_prefix)
    assert n_prefix == sum(1 for i in range(vt) if i not in specials and pieces[y].startswith(pieces[i]) and 0 < len(pieces[i]) < len(pieces[y]))

    bos = ids('<|begin_of_text|>')
    a = ids('a')  # a single byte has no strict prefix
    for table in (simple_table, table_for(ObjectiveSpec('prefix_softmax_norm', 1.0, 0.05, 'strict'), byte_vocab)):
        assert dense_row(table, bos, vt)[bos] == 1.0  # special gold: one-hot, '<' gets nothing
        assert dense_row(table, a, vt)[a] == 1.0
    ls = dense_row(table_for(ObjectiveSpec('label_smoothing', 0.1), byte_vocab), bos, vt)
    assert ls[bos] == pytest.approx(0.9) and ls[ids('<')] == pytest.approx(0.1 / (vt - 1))


def test_strict_support_puts_no_mass_on_gold_at_eps1(tokenizer, byte_vocab):
    y = tokenizer.convert_tokens_to_ids('Ġstrawberry')
    strict = dense_row(table_for(ObjectiveSpec('prefix_softmax', 1.0, 1.0, 'strict'), byte_vocab), y, len(byte_vocab[0]))
    inclusive = dense_row(table_for(ObjectiveSpec('prefix_softmax', 1.0, 1.0, 'inclusive'), byte_vocab), y, len(byte_vocab[0]))
    assert strict[y] == 0.0 and inclusive[y] > 0.5


@pytest.mark.parametrize('kwargs, message', [
    (dict(objective='focal'), "^algorithms.prefix_smoothing.objective: unknown objective 'focal'"),
    (dict(objective='prefix_simple', eps=1.5), r'^algorithms.prefix_smoothing.eps must be a number in \[0, 1\] or a schedule'),
    (dict(objective='prefix_simple', eps=-0.1), '^algorithms.prefix_smoothing.eps must be'),
    (dict(objective='prefix_simple'), "^algorithms.prefix_smoothing.eps is missing: objective 'prefix_simple' reads it"),
    (dict(objective='prefix_softmax', eps=0.1, tau=0.0), '^algorithms.prefix_smoothing.tau must be'),
    (dict(objective='prefix_softmax', eps=0.1, tau=-1.0), '^algorithms.prefix_smoothing.tau must be'),
    (dict(objective='prefix_softmax', eps=0.1, support='loose'), '^algorithms.prefix_smoothing.support must be'),
])
def test_bad_objective_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveSpec(**kwargs)


def test_lookup_gathers_only_the_batch_support(tokenizer, byte_vocab):
    table = table_for(ObjectiveSpec('prefix_softmax', 1.0, 0.05), byte_vocab)
    words = tokenizer(' personality strawberry a the', add_special_tokens=False).input_ids
    labels = torch.tensor(words + [-100])
    targets = table.lookup(labels)
    safe = labels.clamp_min(0)
    k = targets.ids.shape[1]
    assert 1 < k < table.ids.shape[1]  # the batch's longest support, not K
    assert torch.equal(targets.ids, table.ids[safe, :k]) and torch.equal(targets.weights, table.weights[safe, :k])
    assert (table.weights[safe, k:] == 0).all()  # nothing with mass was cut off


# -- per-id statistics (objectives.stats) -----------------------------------------------------------

TINY_PIECES = [b'a', b'ab', b'abc', b'abcd', b'b', b'ba', b'<s>', b'x']
TINY_SPECIALS = {6}


@pytest.mark.parametrize('spec', list(dict.fromkeys(objective_spec(o, eps=eps, tau=tau, support=sup) for o in OBJECTIVES
                                                   for eps in (0.0, 0.1, 1.0) for tau in (0.05, 1.0) for sup in SUPPORTS)))
def test_stats_match_dense_float64_targets(spec):
    from prefix_composer.objectives.stats import per_id_stats

    table = build_target_table(TINY_PIECES, TINY_SPECIALS, spec)
    off_gold, entropy = per_id_stats(table)
    vt = len(TINY_PIECES)
    for y in range(vt):
        q = dense_row(table, y, vt).clamp_min(0.0)  # label smoothing at eps=1: gold 1-eps-u+u rounds to about 0
        assert off_gold[y].item() == pytest.approx((q.sum() - q[y]).item(), abs=1e-12)
        assert entropy[y].item() == pytest.approx(-torch.special.xlogy(q, q).sum().item(), abs=1e-12)


def test_longest_prefix_variant_puts_eps_on_the_longest_strict_prefix(byte_vocab):
    """yamls/prefix_longest_eps0p1 (modded-nanogpt PR #337): >= 0.999 of eps on the longest prefix."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
    import make_yamls

    variant = next(v for f in make_yamls.FAMILIES for v in f.variants if v.name == 'prefix_longest_eps0p1')
    spec = ObjectiveSpec(**variant.algorithms()['prefix_smoothing'])
    pieces, specials = byte_vocab
    table = build_target_table(pieces, specials, spec)
    assert torch.isfinite(table.weights).all()
    longest = torch.tensor([p[-1] if p else -1 for p in strict_prefix_ids(pieces, specials)])
    with_prefix = torch.nonzero(longest >= 0).squeeze(1)
    assert len(with_prefix) > 100_000
    rows = table.weights[with_prefix].double()
    on_longest = (rows * (table.ids[with_prefix] == longest[with_prefix, None])).sum(dim=1)
    assert (on_longest >= 0.999 * spec.eps).all(), f'min share {float(on_longest.min() / spec.eps)}'
    gold = (rows * (table.ids[with_prefix] == with_prefix[:, None])).sum(dim=1)
    torch.testing.assert_close(gold, torch.full_like(gold, 1 - spec.eps), rtol=0, atol=1e-7)
