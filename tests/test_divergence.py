"""Divergence stop (docs/preemption.md#divergence): a non-finite loss ends the run before its next
checkpoint, the run folder records it, and a restart is refused until allow_diverged_resume=true.

The end-to-end test runs the real ``python train.py yamls/smoke_cpu.yaml`` with a NaN loss
injected at a checkpoint batch by the test-only callback of ``tests/non_finite_loss.py``, which
llm-foundry's registry finds through an entry point of a throw-away distribution on PYTHONPATH.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch
from composer.core import Precision
from composer.devices import DeviceCPU

from prefix_composer.runtime.divergence import GRAD_NORM_KEY, DivergenceStop, TrainingDiverged
from prefix_composer.runtime.run_record import (
    RECORD_NAME,
    RunDiverged,
    outcome,
    read_record,
    recorded_start,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, 'tests')
NAN_AT = 4  # a checkpoint batch (save_interval 2ba): a stop after its BATCH_CHECKPOINT would save NaN weights
OVERRIDES = ['max_seq_len=32', 'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
             'max_duration=6ba', 'save_interval=2ba', 'save_num_checkpoints_to_keep=2', 'eval_interval=3ba',
             'eval_subset_num_batches=1', 'console_log_interval=1ba']


def with_injection_entry_point(site) -> dict[str, str]:
    """An environment whose Python sees the ``inject_non_finite_loss`` llm-foundry callback."""
    dist_info = site / 'prefix_composer_test_callbacks-0.dist-info'
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / 'METADATA').write_text('Metadata-Version: 2.1\nName: prefix-composer-test-callbacks\nVersion: 0\n')
    (dist_info / 'entry_points.txt').write_text(
        '[llmfoundry_callbacks]\ninject_non_finite_loss = non_finite_loss:InjectNonFiniteLoss\n')
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(site), TESTS, os.environ.get('PYTHONPATH', '')])}


def train(run_root, mds, env, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'train.py', 'yamls/smoke_cpu.yaml', *OVERRIDES, f'variables.run_root={run_root}',
                           f'variables.data.mds_dir={mds}', *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)


def csv_rows(run_root) -> list[dict]:
    with open(run_root / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_nan_loss_stops_before_the_checkpoint_and_a_restart_needs_allow_diverged_resume(tiny_mds, tmp_path):
    env = with_injection_entry_point(tmp_path / 'site')
    run_root = tmp_path / 'runs'
    folder = run_root / 'smoke_cpu' / 'checkpoints'
    done = train(run_root, tiny_mds, env, f'callbacks.inject_non_finite_loss.at_batch={NAN_AT}')
    log = done.stdout + done.stderr
    assert done.returncode != 0, log[-3000:]
    assert f'Training diverged at batch {NAN_AT}: loss/train/total = nan' in log

    # The folder keeps the finite checkpoint of batch 2 only: no batch-4 checkpoint was written.
    assert sorted(n for n in os.listdir(folder) if n.endswith('.pt')) == ['ep0-ba2-rank0.pt', 'latest-rank0.pt']
    assert os.readlink(folder / 'latest-rank0.pt') == 'ep0-ba2-rank0.pt'
    weights = torch.load(folder / 'ep0-ba2-rank0.pt', map_location='cpu', weights_only=False)['state']['model']
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())

    # The CSV keeps the rows of the finite batches; the record names the batch and the last finite loss.
    rows = csv_rows(run_root)
    train_rows = {int(r['batch']): float(r['loss/train/total']) for r in rows if r['phase'] == 'train'}
    assert sorted(train_rows) == [1, 2, 3] and all(math.isfinite(v) for v in train_rows.values())
    record = read_record(str(folder))
    assert record['state'] == 'diverged' and record['starts'] == 1 and record['checkpoint_batch'] == 2
    assert record['diverged'] == {'batch': NAN_AT, 'metric': 'loss/train/total', 'value': 'nan',
                                  'last_finite_batch': NAN_AT - 1, 'last_finite_loss': pytest.approx(train_rows[NAN_AT - 1], rel=1e-6)}
    assert record['error'].startswith(f'TrainingDiverged: Training diverged at batch {NAN_AT}')

    # The same command again is refused before training, and the record is left as it was.
    before = (folder / RECORD_NAME).read_text()
    refused = train(run_root, tiny_mds, env, f'callbacks.inject_non_finite_loss.at_batch={NAN_AT}')
    assert refused.returncode != 0
    assert f'the last start diverged at batch {NAN_AT}' in refused.stderr and 'allow_diverged_resume=true' in refused.stderr
    assert (folder / RECORD_NAME).read_text() == before
    assert 'ep0-ba2-rank0.pt' in os.listdir(folder) and not (folder / 'ep0-ba4-rank0.pt').exists()

    # Told to (the "fix": no more injection), it resumes from batch 2 and finishes.
    resumed = train(run_root, tiny_mds, env, 'allow_diverged_resume=true')
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert 'Autoresume checkpoint: ' in resumed.stderr and 'ep0-ba2-rank0.pt' in resumed.stderr
    record = read_record(str(folder))
    assert record['state'] == 'finished' and record['starts'] == 2 and record['diverged'] is None
    assert record['checkpoint_batch'] == 6 and [d['batch'] for d in record['divergences']] == [NAN_AT]
    assert sorted(int(r['batch']) for r in csv_rows(run_root) if r['phase'] == 'train') == [1, 2, 3, 4, 5, 6]


def fake_state(loss: float, grad: float, precision=Precision.FP32, batch: int = 7):
    model = torch.nn.Linear(2, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, grad)
    return types.SimpleNamespace(total_loss_dict={'loss/train/total': loss}, precision=precision, model=model,
                                 device=DeviceCPU(), timestamp=types.SimpleNamespace(batch=batch))


def test_non_finite_gradient_norm_with_a_finite_loss_stops_too():
    stop = DivergenceStop()
    stop.batch_end(fake_state(2.5, 0.1, batch=6), None)  # finite: remembered as the last finite loss
    with pytest.raises(TrainingDiverged) as error:
        stop.batch_end(fake_state(2.4, math.inf), None)
    assert (error.value.batch, error.value.metric, error.value.value) == (7, GRAD_NORM_KEY, math.inf)
    assert (error.value.last_finite_batch, error.value.last_finite_loss) == (6, 2.5)
    DivergenceStop(check_gradients=False).batch_end(fake_state(2.4, math.inf), None)  # gradients not checked
    DivergenceStop().batch_end(fake_state(2.4, math.inf, Precision.AMP_FP16), None)  # the grad scaler's business


@pytest.mark.parametrize('error, state', [
    (None, 'finished'), (SystemExit(0), 'preempted'), (SystemExit(143), 'preempted'), (SystemExit(1), 'failed'),
    (RuntimeError('CUDA out of memory'), 'failed'), (KeyboardInterrupt(), 'failed'),
    (TrainingDiverged(3, 'loss/train/total', math.nan, 2, 1.5), 'diverged'),
])
def test_outcome_of_a_start(error, state):
    assert outcome(error) == state


def test_recorded_start_counts_starts_and_keeps_the_error(tmp_path):
    with recorded_start(str(tmp_path), 'r'):
        assert read_record(str(tmp_path))['state'] == 'running'
    with pytest.raises(ValueError), recorded_start(str(tmp_path), 'r'):
        raise ValueError('bad shard')
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert (record['state'], record['starts'], record['error'], record['pid']) == ('failed', 2, 'ValueError: bad shard', os.getpid())
    with pytest.raises(TrainingDiverged), recorded_start(str(tmp_path), 'r'):
        raise TrainingDiverged(9, 'loss/train/total', math.inf, 8, 3.25)
    with pytest.raises(RunDiverged, match='diverged at batch 9 .*allow_diverged_resume=true'):
        with recorded_start(str(tmp_path), 'r'):
            pass
    assert read_record(str(tmp_path))['starts'] == 3  # the refused start is not recorded
