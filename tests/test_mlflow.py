"""MLflow beside the CSV (prefix_composer/runtime/mlflow_logger.py), read back through mlflow's client.

The real ``composer train.py`` run with ``loggers.mlflow`` on a local ``file:`` tracking store, SIGKILLed
twice and resumed, is test_preemption's SIGKILL test (its runs have every stateful component on); it
checks the store with ``assert_one_mlflow_run_with_each_csv_value_once``: one run, the CSV's values at
every step once, the experiment's params and the variant/replica tags."""

from __future__ import annotations

import csv
import math

from mlflow import MlflowClient

from prefix_composer.runtime.mlflow_logger import CheckpointedMLFlowLogger, replica_tags


def csv_rows(run_root) -> list[dict]:
    with open(run_root / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        return list(csv.DictReader(f))


def assert_one_mlflow_run_with_each_csv_value_once(store: str, experiment_name: str, run_root, max_batches: int):
    """The smoke run under ``run_root`` (``run_name`` smoke_cpu, seed 17), however often it was killed and
    resumed, is one finished MLflow run in ``store`` holding every value of its metrics.csv at the CSV's
    batch, no step twice, with the experiment's params and the variant/replica tags."""
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # every restart continued the killed run's MLflow run
    run = runs[0]
    assert run.info.run_name == 'smoke_cpu' and run.info.status == 'FINISHED'
    assert {k: run.data.tags[k] for k in ('variant', 'replica', 'family', 'run_name')} == {
        'variant': 'smoke_cpu', 'replica': '0', 'family': 'smoke_cpu', 'run_name': 'smoke_cpu'}
    params = run.data.params
    assert {k: params[k] for k in ('objective', 'tau', 'support', 'seed', 'family')} == {
        'objective': 'prefix_softmax', 'tau': '1.0', 'support': 'inclusive', 'seed': '17', 'family': 'smoke_cpu'}
    assert params['model.config.hidden_size'] == '64' and len(params['data.train_loader.index_sha256']) == 64
    assert params['max_duration'] == f'{max_batches}ba'

    # Every CSV value is in MLflow at the CSV's batch, once; no step twice (killed runs logged past their checkpoint).
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
        range(1, max_batches + 1))


def test_replica_tags():
    assert replica_tags('prefix_simple_seed2') == {'variant': 'prefix_simple', 'replica': '2'}
    assert replica_tags('ce') == {'variant': 'ce', 'replica': '0'}
    assert issubclass(CheckpointedMLFlowLogger, __import__('composer').loggers.MLFlowLogger)
