"""MLflow beside ``metrics.csv``: Composer's ``MLFlowLogger``, one MLflow run per run folder across restarts.

``CheckpointedMLFlowLogger`` is registered as llm-foundry's logger ``mlflow`` (this project's entry
point takes precedence over llm-foundry's built-in of that name), so ``loggers.mlflow:
{tracking_uri: ..., experiment_name: ...}`` in a YAML, or ``loggers.mlflow.tracking_uri=...`` on
the command line, turns it on. Over Composer's logger it:

* resumes by default (``resume: true``): a restart finds the MLflow run tagged with its
  ``run_name`` and continues it, so a preempted run stays one MLflow run;
* sends every value (``log_duplicated_metric_every_n_steps: 0``) at the step the CSV gives it: the
  batch during (or after) which it was logged, so train, eval and lm-eval values of batch ``b`` all
  have step ``b``;
* holds the values back until a checkpoint at or after their batch is saved, then sends them at the
  next batch's start (and at close up to the newest checkpoint), synchronously (``synchronous:
  true``, so a kill cannot lose what was sent): what a killed run logged past its last checkpoint
  is never sent, and its restart sends those batches once, like the CSV drops them. A kill in the
  instant between a save and the next batch's start loses that interval in MLflow (the CSV keeps it);
* logs the config flattened to dotted keys (MLflow shows nested dicts as one string), plus the run
  folder's experiment record (``experiment.json``, with the data hashes) and short params
  ``objective, eps, tau, support, seed, family, data_sha256``; a param that a restart changes
  (e.g. ``max_duration``) keeps its first value (MLflow params cannot change), with a warning;
* tags the run with ``variant`` and ``replica`` (``<variant>_seed<k>`` -> variant, k).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Optional

from composer.callbacks import CheckpointSaver
from composer.core import State
from composer.loggers import Logger, MLFlowLogger
from composer.utils import format_name_with_dist

from prefix_composer.config import SEED_SUFFIX
from prefix_composer.files import read_json
from prefix_composer.runtime.experiment import RECORD_DAMAGED, RECORD_NAME, flatten
from prefix_composer.training.csv_logger import metric_phase

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
SHORT_PARAMS = {'objective': 'algorithms.prefix_smoothing.objective', 'eps': 'algorithms.prefix_smoothing.eps',
                'tau': 'algorithms.prefix_smoothing.tau', 'support': 'algorithms.prefix_smoothing.support',
                'seed': 'seed', 'family': 'variables.family', 'data_sha256': 'data.train_loader.manifest_sha256'}


def replica_tags(run_name: str) -> dict[str, str]:
    """``{variant, replica}`` of a run name (``ce_seed2`` -> ce, 2; ``ce`` -> ce, 0)."""
    match = SEED_SUFFIX.search(run_name)
    return {'variant': SEED_SUFFIX.sub('', run_name), 'replica': match.group(0)[len('_seed'):] if match else '0'}


class CheckpointedMLFlowLogger(MLFlowLogger):
    """Composer's ``MLFlowLogger`` aligned with checkpoints and the CSV (module docstring); registered as ``mlflow``."""

    def __init__(self, resume: bool = True, log_duplicated_metric_every_n_steps: int = 0, synchronous: bool = True,
                 **kwargs: Any):
        super().__init__(resume=resume, log_duplicated_metric_every_n_steps=log_duplicated_metric_every_n_steps,
                         synchronous=synchronous, **kwargs)
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.step: Optional[int] = None
        self.resumed_batch = 0
        self.saver: Optional[CheckpointSaver] = None
        self._state: Optional[State] = None

    def init(self, state: State, logger: Logger) -> None:
        self.tags.update(replica_tags(state.run_name))
        super().init(state, logger)
        self._state = state
        self.saver = next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)
        if self.saver is not None:
            record = os.path.join(format_name_with_dist(str(self.saver.folder), state.run_name), RECORD_NAME)
            if os.path.isfile(record):
                self.log_hyperparameters(read_json(record, 'experiment record', RECORD_DAMAGED)['experiment'])

    def fit_start(self, state: State, logger: Logger) -> None:
        self.resumed_batch = int(state.timestamp.batch)

    def before_dataloader(self, state: State, logger: Logger) -> None:
        """From here on train metrics belong to the batch about to be trained (as in ``metrics.csv``):
        set before any algorithm logs at ``BATCH_START`` (e.g. ``objective/eps``); the other phases
        (eval, lm_eval, setup) take the trainer's batch when they are logged, as the CSV does."""
        self.publish(self.saved_batch())
        self.step = int(state.timestamp.batch) + 1

    def close(self, state: State, logger: Logger) -> None:
        self.publish(self.saved_batch())
        super().close(state, logger)

    def saved_batch(self) -> float:
        """The batch of the newest checkpoint this process saved (or resumed from); inf without checkpoints."""
        if self.saver is None:
            return math.inf
        if self.saver.saved_checkpoints:
            newest = self.saver.saved_checkpoints[-1]
            return int(self.saver.all_saved_checkpoints_to_timestamp[newest].batch)
        return self.resumed_batch

    def publish(self, up_to: float) -> None:
        keep = []
        for step, metrics in self.pending:
            if step <= up_to:
                super().log_metrics(metrics, step)
            else:
                keep.append((step, metrics))
        self.pending = keep

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if not self._enabled:
            return
        now = int(self._state.timestamp.batch) if self._state else 0
        by_step: dict[int, dict[str, Any]] = {}
        for name, value in metrics.items():  # as metrics.csv rows them: train values to the batch in progress
            step = self.step if metric_phase(name) == 'train' and self.step is not None else now
            by_step.setdefault(step, {})[name] = value
        self.pending += list(by_step.items())
        if self.saver is None:
            self.publish(math.inf)

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        """Flattened to dotted keys, the short params added; params the MLflow run already has with
        another value keep it (warning)."""
        if not self._enabled:
            return
        flat = {k: v for k, v in flatten(hyperparameters).items()}
        flat.update({short: flat[key] for short, key in SHORT_PARAMS.items() if key in flat})
        params = {k: str(v)[:MAX_PARAM_CHARS] for k, v in flat.items()}
        existing = self._mlflow_client.get_run(self._run_id).data.params
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.warning('MLflow run %s keeps the first value of params changed since: %s.', self._run_id, changed)
        new = {k: v for k, v in params.items() if k not in existing}
        if 'variables.family' in new:
            self._mlflow_client.set_tag(self._run_id, 'family', new['variables.family'])
        if new:
            super().log_hyperparameters(new)
