"""Composer ``LoggerDestination`` that writes every numeric metric to ``metrics.csv``.

One row per logging event, keyed by (batch, phase):

* ``phase`` is ``train`` for the metrics logged while training a batch (written every
  ``log_interval`` batches, like the console, and for the last batch), or the evaluator label for ``metrics/<label>/...`` keys
  (``metrics/eval/LanguageCrossEntropy`` -> ``eval``, ``metrics/lm_eval/...`` -> ``lm_eval``).
* Fixed columns ``batch, tokens, wall_time_s, phase``, then one column per metric name.
  When a new metric name appears the file is rewritten with the wider header, so
  ``pandas.read_csv`` always reads it.
* After an autoresume from batch ``B`` rows with ``batch > B`` (logged after the checkpoint
  by the run that was preempted) are dropped, so no step appears twice.
* A last row that is not a complete record (no line end, or fewer fields than the header: the
  previous process was killed while writing it) is dropped with a warning when the file is read,
  so a cut value or a cut batch number (``1`` of ``12``) never becomes a row.

Only global rank 0 writes. Non-numeric values (e.g. lm-eval's ``'N/A'`` stderr) are skipped.
"""

from __future__ import annotations

import csv
import io
import logging
import numbers
import os
from typing import Any, Optional

import torch
from composer.core import Event, State, Time, TimeUnit
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

log = logging.getLogger(__name__)

FIXED_COLUMNS = ('batch', 'tokens', 'wall_time_s', 'phase')
DEFAULT_PATH = './runs/{run_name}/metrics.csv'


def metrics_path(template: str, run_name: str) -> str:
    """The CSV file of run ``run_name``: ``template`` (the ``path`` argument) with ``{run_name}`` replaced."""
    return template.format(run_name=run_name)


def metric_phase(name: str) -> str:
    """``metrics/<label>/...`` with a label other than train -> label; everything else -> train."""
    parts = name.split('/')
    if len(parts) > 2 and parts[0] == 'metrics' and parts[1] != 'train':
        return parts[1]
    return 'train'


def numeric_value(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item()) if value.numel() else None
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return float(value)
    return None


class CSVLogger(LoggerDestination):
    """Writes metrics to ``path`` (default ``./runs/{run_name}/metrics.csv``); registered as ``csv``.

    Args:
        path: CSV file; ``{run_name}`` is replaced by the run's name.
        log_interval: write a train row every this many batches (use the console_log_interval).
    """

    def __init__(self, path: str = DEFAULT_PATH, log_interval: str | int = '1ba'):
        self.path_template = path
        self.log_interval = Time.from_input(log_interval, TimeUnit.BATCH)
        if self.log_interval.unit != TimeUnit.BATCH or self.log_interval.value < 1:
            raise ValueError(f'csv log_interval must be a positive number of batches, got {log_interval!r}.')
        self.path: Optional[str] = None
        self.columns: list[str] = list(FIXED_COLUMNS)
        self.pending: dict[tuple[int, str], dict[str, Any]] = {}
        self.train_values: dict[str, float] = {}
        self.last_train_batch = -1
        self._state: Optional[State] = None
        self._skipped: set[str] = set()

    # -- Composer hooks -------------------------------------------------------------------
    def init(self, state: State, logger: Logger) -> None:
        self._state = state
        if dist.get_global_rank() == 0:
            self.path = metrics_path(self.path_template, state.run_name)
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def fit_start(self, state: State, logger: Logger) -> None:
        """Drop rows that a preempted run wrote after the checkpoint this run resumed from."""
        if self.path is None or not os.path.exists(self.path):
            return
        resumed = int(state.timestamp.batch)
        header, rows = self._read()
        kept = [r for r in rows if int(float(r['batch'])) <= resumed]
        if len(kept) != len(rows):
            log.info('metrics.csv: dropped %d rows past the resumed batch %d.', len(rows) - len(kept), resumed)
        self.columns = header
        self._rewrite(kept)

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self.path is None:
            return
        for name, value in metrics.items():
            number = numeric_value(value)
            if number is None:
                if name not in self._skipped:
                    self._skipped.add(name)
                    log.warning('metrics.csv: skipping non-numeric metric %s=%r.', name, value)
                continue
            phase = metric_phase(name)
            if phase == 'train':
                self.train_values[name] = number
            else:
                self._row(phase)[name] = number

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        super().run_event(event, state, logger)
        if event in (Event.EVAL_START, Event.BATCH_CHECKPOINT):
            self._close_train_row(state)
        if event in (Event.EVAL_START, Event.BATCH_CHECKPOINT, Event.EVAL_END, Event.FIT_END):
            self._flush()

    def _close_train_row(self, state: State) -> None:
        """Everything logged since the previous batch belongs to the batch that just ended
        (Composer logs its loss before advancing the batch counter, lr/throughput after)."""
        batch = int(state.timestamp.batch)
        if not self.train_values or batch == self.last_train_batch:
            self.train_values = {}  # e.g. the time/* values Composer logs after the last batch
            return
        last = state.max_duration is not None and state.timestamp.get(state.max_duration.unit) >= state.max_duration
        if batch % int(self.log_interval.value) == 0 or last:
            self._row('train').update(self.train_values)
            self.last_train_batch = batch
        self.train_values = {}

    def close(self, state: State, logger: Logger) -> None:
        self._flush()

    # -- file handling --------------------------------------------------------------------
    def _row(self, phase: str) -> dict[str, Any]:
        timestamp = self._state.timestamp
        return self.pending.setdefault((int(timestamp.batch), phase), {
            'batch': int(timestamp.batch),
            'tokens': int(timestamp.token),
            'wall_time_s': round(timestamp.total_wct.total_seconds(), 3),
            'phase': phase,
        })

    def _flush(self) -> None:
        if self.path is None or not self.pending:
            return
        rows = [row for _, row in sorted(self.pending.items())]
        self.pending.clear()
        new = [k for r in rows for k in r if k not in self.columns]
        if new:
            self.columns += list(dict.fromkeys(new))
            old = self._read()[1] if os.path.exists(self.path) else []
            self._rewrite(old + rows)
            return
        write_header = not os.path.exists(self.path)
        with open(self.path, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if write_header:
                writer.writeheader()
            writer.writerows(rows)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        """Header and rows of the file, without a torn last row (see the module docstring)."""
        with open(self.path, newline='') as f:
            text = f.read()
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        header = list(reader.fieldnames or FIXED_COLUMNS)
        if rows and (not text.endswith('\n') or None in rows[-1].values() or None in rows[-1]):
            torn = text.rstrip('\r\n').rsplit('\n', 1)[-1]
            log.warning('%s: dropped its last row %r: not a complete record (the run writing it was killed mid-write).',
                        self.path, torn)
            rows.pop()
        return header, rows

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = f'{self.path}.tmp'
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
