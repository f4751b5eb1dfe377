"""eps schedules: values by hand, the scaled table against a table built at eps_t for every objective,
fused and eager losses under a schedule against float64, the PTP target on the real vocabulary, and
a ``train.py`` run of the smoke model: the logged eps per batch (test_preemption resumes a scheduled run
after SIGKILLs bitwise)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_fused_loss import fused_with_grads, head_example
from test_loss import FLOAT64_RTOL, IGNORE, PADDED_VOCAB, PIECES, SPECIALS, dense_reference, dense_targets
from test_preemption import straight

from prefix_composer.losses.soft_target import soft_target_cross_entropy
from prefix_composer.objectives import EpsSchedule, ObjectiveSpec, build_target_table
from prefix_composer.training.algorithm import PrefixSmoothing
from prefix_composer.training.eps_schedule import objective_spec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'scripts'))

import make_yamls  # noqa: E402

PTP = EpsSchedule('ptp', 0.5, t1=(2, 'ba'), t2=(6, 'ba'))


# -- the schedule's values ---------------------------------------------------------------------

@pytest.mark.parametrize('schedule, times, expected', [
    # ptp, 0.5 until batch 2, linear to 0 at batch 6: 0.5 * (6 - t) / 4 between
    (PTP, [0, 1, 2, 3, 4, 5, 6, 9], [0.5, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0]),
    # linear from 0.2 at the start to 0 at 1000 tokens
    (EpsSchedule('linear', 0.2, t2=(1000, 'tok')), [0, 250, 500, 999, 1000, 5000], [0.2, 0.15, 0.1, 0.0002, 0.0, 0.0]),
    # linear over the whole run (t2 defaults to 1dur)
    (EpsSchedule('linear', 0.4), [0.0, 0.25, 0.5, 1.0], [0.4, 0.3, 0.2, 0.0]),
    (EpsSchedule('constant', 0.3), [0.0, 0.5, 1.0], [0.3, 0.3, 0.3]),
    # modded-nanogpt's shape in dur: 0.2 for the first third, 0.1 halfway through the decay, 0 after
    (EpsSchedule('ptp', 0.2, t1=(0.333, 'dur'), t2=(0.667, 'dur')), [0.0, 0.333, 0.5, 0.667, 0.9], [0.2, 0.2, 0.1, 0.0, 0.0]),
])
def test_schedule_values_equal_a_hand_computation(schedule, times, expected):
    unit = schedule.t2[1] if schedule.t2 else 'dur'
    got = [schedule.at({unit: t}) for t in times]
    assert got == pytest.approx(expected, abs=1e-12)


def test_schedule_is_read_from_composer_time_strings():
    spec = objective_spec('prefix_softmax', {'schedule': 'ptp', 'value': 0.5, 't1': '2ba', 't2': '6ba'}, 0.05, 'strict')
    assert spec.eps == PTP and spec.peak_eps == 0.5
    assert spec.to_config() == {'objective': 'prefix_softmax', 'tau': 0.05, 'support': 'strict',
                                'eps': {'schedule': 'ptp', 'value': 0.5, 't1': '2ba', 't2': '6ba'}}
    assert objective_spec(**spec.to_config()) == spec  # the YAML block round-trips


# -- the scaled table --------------------------------------------------------------------------

SCALED_SPECS = [('label_smoothing', 'inclusive'), ('prefix_simple', 'inclusive'), ('prefix_softmax', 'inclusive'),
                ('prefix_softmax', 'strict'), ('prefix_softmax_norm', 'inclusive'), ('prefix_softmax_norm', 'strict')]


@pytest.mark.parametrize('objective, support', SCALED_SPECS)
@pytest.mark.parametrize('eps_t', [0.0, 0.2, 0.8])
def test_table_at_peak_eps_scaled_equals_the_table_built_at_eps_t(objective, support, eps_t):
    """q_t = (1-eps_t)·onehot + eps_t·r from the table built once at eps_max = 0.8 equals the table built
    at eps_t, uniform part included (label smoothing), on every gold id."""
    params = {'tau': 0.7, 'support': support} if objective.startswith('prefix_softmax') else {}
    peak = build_target_table(PIECES, SPECIALS, ObjectiveSpec(objective, 0.8, **params))
    direct = build_target_table(PIECES, SPECIALS, ObjectiveSpec(objective, eps_t, **params))
    labels = torch.arange(len(PIECES))
    got = dense_targets_of(peak.lookup(labels, IGNORE, eps_t / 0.8), labels)
    want = dense_targets(direct, labels, PADDED_VOCAB)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(len(PIECES), dtype=torch.float64), rtol=0, atol=1e-6)


def dense_targets_of(targets, labels) -> torch.Tensor:
    """Dense [N, PADDED_VOCAB] float64 rows of looked-up ``SparseTargets``."""
    q = torch.zeros(len(labels), PADDED_VOCAB, dtype=torch.float64)
    q.scatter_add_(1, targets.ids, targets.weights.double())
    q[:, :targets.uniform_count] += targets.uniform_mass
    return q


class FakeState:
    """What ``PrefixSmoothing.eps_scale`` reads of Composer's ``State``: the timestamp and elapsed duration."""

    def __init__(self, batch: int, tokens: int = 0):
        from composer.core import Timestamp
        self.timestamp = Timestamp(batch=batch, token=tokens)

    def get_elapsed_duration(self):
        return None


@pytest.mark.parametrize('objective', ['label_smoothing', 'prefix_softmax'])
def test_fused_and_eager_losses_agree_under_a_schedule_with_float64(objective):
    """At batch 4 of PTP (eps 0.25 of peak 0.5): both loss paths on the scaled targets equal the dense
    float64 loss of the target built directly at eps 0.25, and each other's gradients."""
    algorithm = PrefixSmoothing(objective, {'schedule': 'ptp', 'value': 0.5, 't1': '2ba', 't2': '6ba'})
    scale = algorithm.eps_scale(FakeState(batch=4))
    assert scale == 0.5
    table = build_target_table(PIECES, SPECIALS, algorithm.spec)
    hidden, weight, labels = head_example(11, 5, PADDED_VOCAB, torch.float64)
    targets = table.lookup(labels, IGNORE, scale)
    fused_loss, fused_nll, grad_h, grad_w = fused_with_grads(hidden, weight, labels, targets, chunk_tokens=3)

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    eager_loss, eager_nll = soft_target_cross_entropy(h @ w.t(), labels, targets, IGNORE)
    eager_loss.backward()

    direct = build_target_table(PIECES, SPECIALS, ObjectiveSpec(objective, 0.25))
    ref_loss, ref_nll = dense_reference(hidden @ weight.t(), labels, dense_targets(direct, labels, PADDED_VOCAB))
    for loss in (fused_loss, eager_loss.detach()):
        assert abs(loss.item() - ref_loss.item()) <= 1e-6 * abs(ref_loss.item())  # float32 table weights
    assert abs(fused_loss.item() - eager_loss.item()) <= FLOAT64_RTOL * abs(ref_loss.item())
    assert abs(fused_nll.item() - ref_nll.item()) <= FLOAT64_RTOL * abs(ref_nll.item())
    torch.testing.assert_close(grad_h, h.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-12, atol=1e-14)
    unscaled, _ = soft_target_cross_entropy(hidden @ weight.t(), labels, table.lookup(labels, IGNORE), IGNORE)
    assert abs(unscaled.item() - eager_loss.item()) > 1e-3  # the schedule really changed the loss


# -- the PTP variants' target on the real vocabulary --------------------------------------------

@pytest.mark.parametrize('name', ['prefix_ptp', 'prefix_ptp_const'])
def test_ptp_target_is_the_longest_strict_prefix_on_the_real_vocabulary(name, byte_vocab):
    """(1-eps)·onehot(y) + eps·onehot(longest strict byte prefix of y), one-hot without a prefix, on all
    128,256 ids; the longest prefix found by trying every shorter byte string of the token."""
    variant = next(v for f in make_yamls.FAMILIES for v in f.variants if v.name == name)
    spec = variant.spec
    assert spec.peak_eps == 0.2  # auxiliary weight 0.25 in the convex form: 0.25 / 1.25
    pieces, specials = byte_vocab
    assert len(pieces) == 128_256
    table = build_target_table(pieces, specials, spec)
    ids = {p: i for i, p in enumerate(pieces) if i not in specials and p}
    longest = [-1 if y in specials else next((ids[p[:k]] for k in range(len(p) - 1, 0, -1) if p[:k] in ids), -1)
               for y, p in enumerate(pieces)]
    gold = torch.arange(len(pieces))
    expected_gold = torch.tensor([1.0 if j < 0 else 0.8 for j in longest], dtype=torch.float64)
    on_gold = (table.weights.double() * (table.ids == gold[:, None])).sum(dim=1)
    torch.testing.assert_close(on_gold, expected_gold, rtol=0, atol=1e-7)
    has = torch.tensor([j >= 0 for j in longest])
    longest_t = torch.tensor(longest)
    on_longest = (table.weights.double() * (table.ids == longest_t[:, None])).sum(dim=1)
    torch.testing.assert_close(on_longest[has], torch.full((int(has.sum()),), 0.2, dtype=torch.float64), rtol=0, atol=1e-7)
    elsewhere = table.weights.double().sum(dim=1) - on_gold - torch.where(has, on_longest, torch.zeros_like(on_longest))
    assert float(elsewhere.abs().max()) < 1e-8  # shorter prefixes: eps·e^-20 at most
    assert int(has.sum()) > 100_000
    for y in torch.nonzero(has).squeeze(1)[::4001].tolist():  # 30 ids: the longest prefix by scanning every id
        scanned = [i for i, p in enumerate(pieces) if i not in specials and 0 < len(p) < len(pieces[y]) and pieces[y].startswith(p)]
        assert longest[y] == max(scanned, key=lambda i: len(pieces[i]))


# -- training: the eps in force per batch ----------------------------------------------------------

BATCHES = 6
# 0.5 until 0.2 of the run, linear to 0 at 0.7; the batch trained as metrics.csv row n starts at t = (n-1)/6.
SCHEDULE = '{schedule: ptp, value: 0.5, t1: 0.2dur, t2: 0.7dur}'
EXPECTED_EPS = [0.5, 0.5, 0.5 * (0.7 - 2 / 6) / 0.5, 0.5 * (0.7 - 3 / 6) / 0.5, 0.5 * (0.7 - 4 / 6) / 0.5, 0.0]
OVERRIDES = [
    'max_seq_len=32', 'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
    f'max_duration={BATCHES}ba', 'save_interval=2ba', 'save_num_checkpoints_to_keep=2', 'eval_interval=3ba',
    'eval_subset_num_batches=1', 'console_log_interval=1ba',
    'algorithms.prefix_smoothing.objective=prefix_softmax', f'algorithms.prefix_smoothing.eps={SCHEDULE}',
    'algorithms.prefix_smoothing.tau=0.05', 'algorithms.prefix_smoothing.support=strict',
]


def train_rows(run_root) -> pd.DataFrame:
    metrics = pd.read_csv(run_root / 'smoke_cpu' / 'metrics.csv')
    return metrics[metrics.phase == 'train'].reset_index(drop=True)


@pytest.fixture(scope='module')
def scheduled_run(tmp_path_factory, tiny_mds):
    return straight(tmp_path_factory, tiny_mds, 'scheduled', OVERRIDES)


def test_eps_in_force_is_logged_per_batch_and_reaches_the_loss(scheduled_run):
    train = train_rows(scheduled_run)
    assert train.batch.tolist() == list(range(1, BATCHES + 1))
    assert train['objective/eps'].tolist() == pytest.approx(EXPECTED_EPS, abs=1e-12)
    gap = (train['loss/train/total'] - train['loss/train/nll']).abs()
    assert gap.iloc[0] > 1e-2 and gap.iloc[-1] < 1e-5  # eps 0 at the last batch: the objective is the NLL


def test_a_changed_schedule_is_refused_at_resume(tiny_mds, tmp_path):
    """The experiment record holds the schedule key by key: another t2, or a number for the schedule, is
    another experiment (the record is what ``composer train.py`` checks before resuming)."""
    from test_run_folder import folder_of, smoke

    from prefix_composer.runtime.experiment import check_experiment

    scheduled = 'algorithms.prefix_smoothing.eps={schedule: ptp, value: 0.2, t1: 10ba, t2: 20ba}'
    os.makedirs(folder_of(tmp_path))
    first = check_experiment(smoke(tiny_mds, tmp_path, scheduled), str(folder_of(tmp_path)), resuming=False)
    assert {k: v for k, v in first['experiment'].items() if k.startswith('algorithms.prefix_smoothing.eps')} == {
        'algorithms.prefix_smoothing.eps.schedule': 'ptp', 'algorithms.prefix_smoothing.eps.value': 0.2,
        'algorithms.prefix_smoothing.eps.t1': '10ba', 'algorithms.prefix_smoothing.eps.t2': '20ba'}
    check_experiment(smoke(tiny_mds, tmp_path, scheduled), str(folder_of(tmp_path)), resuming=True)  # the same: resumes
    with pytest.raises(ValueError, match='algorithms.prefix_smoothing.eps.t2: "20ba" -> "30ba"'):
        check_experiment(smoke(tiny_mds, tmp_path, scheduled.replace('20ba', '30ba')), str(folder_of(tmp_path)), resuming=True)
    with pytest.raises(ValueError, match='algorithms.prefix_smoothing.eps: "<unset>" -> 0.2; algorithms.prefix_smoothing.eps.schedule'):
        check_experiment(smoke(tiny_mds, tmp_path, 'algorithms.prefix_smoothing.eps=0.2'), str(folder_of(tmp_path)), resuming=True)
