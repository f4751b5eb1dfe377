"""MLflow beside the CSV (prefix_composer/runtime/mlflow_logger.py): the real ``composer train.py`` on
the smoke model with ``loggers.mlflow`` on a local ``file:`` tracking store, SIGKILLed after batch 5
(checkpoints every 2 batches) and resumed; read back through mlflow's client: one run, the CSV's
values at every step once, the experiment's params and the variant/replica tags."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time

from mlflow import MlflowClient

from prefix_composer.runtime.mlflow_logger import CheckpointedMLFlowLogger, replica_tags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSER = os.path.join(os.path.dirname(sys.executable), 'composer')
MAX_BATCHES = 8
KILL_AFTER = 5  # between the checkpoints of 4 and 6: batch 5 is logged by the killed run and again by the restart
OVERRIDES = ['max_seq_len=32', 'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
             f'max_duration={MAX_BATCHES}ba', 'save_interval=2ba', 'save_num_checkpoints_to_keep=2', 'eval_interval=4ba',
             'eval_subset_num_batches=1', 'console_log_interval=1ba']
TIMEOUT_S = 1800


def csv_rows(run_root) -> list[dict]:
    path = run_root / 'smoke_cpu' / 'metrics.csv'
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_a_killed_and_resumed_run_is_one_mlflow_run_with_each_step_once(tiny_mds, tmp_path):
    run_root, store = tmp_path / 'runs', f'file:{tmp_path / "mlruns"}'
    command = [COMPOSER, 'train.py', 'yamls/smoke_cpu.yaml', *OVERRIDES, f'variables.run_root={run_root}',
               f'variables.data.mds_dir={tiny_mds}', f'loggers.mlflow.tracking_uri={store}',
               'loggers.mlflow.experiment_name=sweep']
    with open(tmp_path / 'killed.log', 'w') as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + TIMEOUT_S
        while max((int(r['batch']) for r in csv_rows(run_root)), default=0) < KILL_AFTER:
            assert proc.poll() is None, (tmp_path / 'killed.log').read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name('sweep')
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the restart continued the killed run's MLflow run
    run = runs[0]
    assert run.info.run_name == 'smoke_cpu' and run.info.status == 'FINISHED'
    assert {k: run.data.tags[k] for k in ('variant', 'replica', 'family', 'run_name')} == {
        'variant': 'smoke_cpu', 'replica': '0', 'family': 'smoke_cpu', 'run_name': 'smoke_cpu'}
    params = run.data.params
    assert {k: params[k] for k in ('objective', 'eps', 'tau', 'support', 'seed', 'family')} == {
        'objective': 'prefix_softmax', 'eps': '1.0', 'tau': '1.0', 'support': 'inclusive', 'seed': '17',
        'family': 'smoke_cpu'}
    assert params['model.config.hidden_size'] == '64' and len(params['data.train_loader.index_sha256']) == 64
    assert params['max_duration'] == f'{MAX_BATCHES}ba'

    # Every CSV value is in MLflow at the CSV's batch, once; no step twice (batch 5 was logged before the kill).
    rows = csv_rows(run_root)
    columns = [c for c in rows[0] if c not in ('batch', 'tokens', 'wall_time_s', 'phase')
               and not c.startswith(('throughput/', 'time/'))]
    assert {'loss/train/total', 'loss/train/nll', 'metrics/eval/LanguageCrossEntropy'} <= set(columns)
    for column in columns:
        want = {int(r['batch']): float(r[column]) for r in rows if r[column] not in ('', None)}
        history = client.get_metric_history(run.info.run_id, column)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f'{column}: duplicated steps {sorted(steps)}'
        got = {m.step: m.value for m in history}
        for batch, value in want.items():
            assert math.isclose(got[batch], value, rel_tol=1e-6), (column, batch, got.get(batch), value)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, 'loss/train/total')) == list(
        range(1, MAX_BATCHES + 1))


def test_replica_tags():
    assert replica_tags('prefix_simple_seed2') == {'variant': 'prefix_simple', 'replica': '2'}
    assert replica_tags('ce') == {'variant': 'ce', 'replica': '0'}
    assert issubclass(CheckpointedMLFlowLogger, __import__('composer').loggers.MLFlowLogger)
