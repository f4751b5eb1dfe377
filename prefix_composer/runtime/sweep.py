"""A sweep's runs: planned from their YAMLs, and read back from their run folders alone.

``scripts/sweep.py`` is the command line (plan, submit, status, report). A run folder is
``<run_root>/<run_name>/`` with ``metrics.csv``, ``lm_eval/`` and ``checkpoints/`` (the save folder:
checkpoints, ``run.lock``, ``experiment.json``, ``last_start.json``).

Status of a run (``run_status``), from the folder only (no Run:ai access):

* ``not started``: no run folder, or one without metrics, checkpoints or start record;
* ``running``: a live process holds the run lock. On this host that is exact: the kernel's lock
  table (``/proc/locks``) lists the lock file's inode. A lock file naming another host cannot be
  tested from here without taking the lock (which could make that host's next start fail), so
  such a holder counts as live while the run's heartbeat (newest write of ``metrics.csv``,
  ``last_start.json``, a checkpoint or lm-eval records) is younger than the stall threshold;
* ``diverged`` / ``failed`` / ``finished``: how the last start ended (``last_start.json``);
* ``preempted and waiting``: not live, the last start was preempted or killed (its record still
  says running), heartbeat younger than the threshold;
* ``stalled``: the same with an older heartbeat: a dead host's stale lock, a job that was never
  rescheduled, a crash that could not write its record.

Needing attention: failed, diverged, stalled (and a live run without a heartbeat for longer than
the threshold, shown as running with a note).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import socket
import time
from typing import Any, Optional, Sequence

from composer.core import Time, TimeUnit
from omegaconf import DictConfig

from prefix_composer.config import load_config
from prefix_composer.evaluation.records import RECORDS_SUBDIR, records_by_batch
from prefix_composer.files import read_json
from prefix_composer.runtime.checkpoints import local_save_folder, newest_checkpoint
from prefix_composer.runtime.experiment import RECORD_DAMAGED
from prefix_composer.runtime.experiment import RECORD_NAME as EXPERIMENT_NAME
from prefix_composer.runtime.run_folder import LOCK_NAME
from prefix_composer.runtime.run_record import RECORD_NAME as LAST_START_NAME
from prefix_composer.runtime.run_record import read_record

CHECKPOINTS_SUBDIR = 'checkpoints'  # save_folder: ${variables.run_root}/${run_name}/checkpoints in every YAML
METRICS_NAME = 'metrics.csv'
TRAIN_LOSS = 'loss/train/total'
VAL_NLL = 'metrics/eval/LanguageCrossEntropy'
THROUGHPUT = 'throughput/tokens_per_sec'
ATTENTION = ('failed', 'diverged', 'stalled')
LOCK_HOLDER = re.compile(r'^host (?P<host>.+?), pid (?P<pid>\d+), started (?P<started>\S+)$')


# -- plan ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlannedRun:
    variant: str
    replica: int
    yaml: str
    run_name: str
    save_folder: str
    tokens: Optional[int]

    @property
    def run_folder(self) -> str:
        return os.path.dirname(self.save_folder)


def max_tokens(max_duration: Any, batch_size: Any, seq_len: Any) -> Optional[int]:
    """Tokens of ``max_duration`` (``Ntok``; ``Nba`` x batch x seq_len; ``Nsp`` x seq_len); None in epochs."""
    duration = Time.from_input(str(max_duration))
    if duration.unit == TimeUnit.TOKEN:
        return int(duration.value)
    if duration.unit == TimeUnit.BATCH:
        return int(duration.value) * int(batch_size) * int(seq_len)
    if duration.unit == TimeUnit.SAMPLE:
        return int(duration.value) * int(seq_len)
    return None


def config_tokens(cfg: DictConfig) -> Optional[int]:
    return max_tokens(cfg.max_duration, cfg.global_train_batch_size, cfg.max_seq_len)


def plan_run(variant: str, replica: int, yaml: str, overrides: Sequence[str] = ()) -> PlannedRun:
    """Replica ``replica`` of ``variant`` from its YAML, read as ``train.py`` reads it."""
    cfg = load_config(yaml, overrides)
    save_folder = local_save_folder(cfg)
    if save_folder is None:
        raise ValueError(f'{yaml}: save_folder {cfg.get("save_folder")!r} is unset or remote; the sweep reads run '
                         'folders from a local (mounted) save_folder.')
    return PlannedRun(variant, replica, yaml, str(cfg.run_name), save_folder, config_tokens(cfg))


def gpu_hours(tokens: int, tokens_per_s_per_gpu: float) -> float:
    """GPU-hours to train ``tokens`` at ``tokens_per_s_per_gpu`` (per GPU, so independent of the GPU count)."""
    return tokens / tokens_per_s_per_gpu / 3600.0


# -- status --------------------------------------------------------------------------------
@dataclasses.dataclass
class RunStatus:
    run: str
    state: str
    tokens_done: Optional[int] = None
    tokens_max: Optional[int] = None
    checkpoint_batch: Optional[int] = None
    checkpoint_age_s: Optional[float] = None
    restarts: Optional[int] = None
    train_loss: Optional[float] = None
    val_nll: Optional[float] = None
    lm_evals: int = 0
    tokens_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    note: str = ''

    @property
    def needs_attention(self) -> bool:
        return self.state in ATTENTION or 'no heartbeat' in self.note


def lock_holder(save_folder: str) -> Optional[dict[str, str]]:
    """``{host, pid, started}`` written in ``run.lock`` by its last holder (None: no lock file or no holder)."""
    path = os.path.join(save_folder, LOCK_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        match = LOCK_HOLDER.match(f.read().strip())
    return match.groupdict() if match else None


def locked_on_this_host(path: str, proc_locks: str = '/proc/locks') -> bool:
    """Whether a process of this host holds a lock on ``path`` (its device and inode in the kernel's lock table)."""
    try:
        st = os.stat(path)
        with open(proc_locks) as f:
            table = f.read()
    except OSError:
        return False
    inode = f'{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}'
    return any(len(fields) > 5 and fields[5] == inode for fields in (line.split() for line in table.splitlines()))


def read_metrics(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline='') as f:
        return [row for row in csv.DictReader(f) if row.get('batch')]


def last_number(rows: list[dict[str, str]], column: str, phase: str) -> Optional[float]:
    for row in reversed(rows):
        if row.get('phase') == phase and row.get(column) not in (None, ''):
            return float(row[column])
    return None


def throughput(rows: list[dict[str, str]]) -> Optional[float]:
    """Tokens/s: the speed monitor's last value, else over the last two train rows."""
    logged = last_number(rows, THROUGHPUT, 'train')
    if logged is not None:
        return logged
    train = [r for r in rows if r.get('phase') == 'train']
    if len(train) >= 2:
        a, b = train[-2], train[-1]
        dt = float(b['wall_time_s']) - float(a['wall_time_s'])
        if dt > 0:
            return (int(b['tokens']) - int(a['tokens'])) / dt
    return None


def mtime(path: str) -> Optional[float]:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def run_status(run_folder: str, stall_after_s: float, now: Optional[float] = None,
               this_host: Optional[str] = None, proc_locks: str = '/proc/locks') -> RunStatus:
    """The status of the run in ``run_folder`` (see the module docstring)."""
    now = time.time() if now is None else now
    this_host = this_host or socket.gethostname()
    name = os.path.basename(os.path.normpath(run_folder))
    save_folder = os.path.join(run_folder, CHECKPOINTS_SUBDIR)
    metrics = os.path.join(run_folder, METRICS_NAME)
    record = read_record(save_folder) if os.path.isdir(save_folder) else None
    experiment_path = os.path.join(save_folder, EXPERIMENT_NAME)
    experiment = (read_json(experiment_path, 'experiment record', RECORD_DAMAGED) if os.path.isfile(experiment_path)
                  else None)
    checkpoint, checkpoint_file = newest_checkpoint(save_folder)
    rows = read_metrics(metrics)
    if record is None and checkpoint is None and not rows:
        return RunStatus(name, 'not started')

    records_dir = os.path.join(run_folder, RECORDS_SUBDIR)
    status = RunStatus(name, '', checkpoint_batch=checkpoint, lm_evals=len(records_by_batch(records_dir)))
    if experiment is not None:
        status.tokens_max = max_tokens(experiment['settings'].get('max_duration'),
                                       experiment['experiment'].get('global_train_batch_size'),
                                       experiment['experiment'].get('max_seq_len'))
    if rows:
        status.tokens_done = int(rows[-1]['tokens'])
        status.train_loss = last_number(rows, TRAIN_LOSS, 'train')
        status.val_nll = last_number(rows, VAL_NLL, 'eval')
        status.tokens_per_s = throughput(rows)
    if checkpoint_file is not None:
        status.checkpoint_age_s = now - os.path.getmtime(checkpoint_file)
    if record is not None:
        status.restarts = int(record.get('starts', 1)) - 1

    beats = [mtime(p) for p in (metrics, os.path.join(save_folder, LAST_START_NAME), records_dir, checkpoint_file or '')]
    heartbeat_age = now - max((b for b in beats if b is not None), default=now)
    holder = lock_holder(save_folder)
    if locked_on_this_host(os.path.join(save_folder, LOCK_NAME), proc_locks):
        live = True
    elif holder is not None and holder['host'] != this_host and (record or {}).get('state') == 'running':
        live = heartbeat_age < stall_after_s  # another host's lock: untestable here, judged by its heartbeat
    else:
        live = False
    ended = (record or {}).get('state')
    if live:
        status.state = 'running'
        if heartbeat_age >= stall_after_s:
            status.note = f'no heartbeat for {format_age(heartbeat_age)} (hung?)'
        elif holder is not None and holder['host'] != this_host:
            status.note = f'on {holder["host"]}'
    elif ended == 'diverged' or (record or {}).get('diverged'):
        status.state = 'diverged'
        d = record['diverged']
        status.note = f'diverged at batch {d["batch"]} ({d["metric"]} = {d["value"]}), last finite loss {d["last_finite_loss"]}'
    elif ended == 'failed':
        status.state = 'failed'
        status.note = str(record.get('error') or '')[:120]
    elif ended == 'finished':
        status.state = 'finished'
    elif heartbeat_age >= stall_after_s:
        status.state = 'stalled'
        who = f'{holder["host"]} pid {holder["pid"]}' if holder else 'its last start'
        status.note = f'no live lock; last heartbeat {format_age(heartbeat_age)} ago ({who}, last start {ended or "unrecorded"})'
    else:
        status.state = 'preempted and waiting'
        status.note = 'preempted' if ended == 'preempted' else 'killed (no exit recorded)' if ended == 'running' else ''
    if status.state in ('running', 'preempted and waiting') and status.tokens_per_s and status.tokens_max and \
            status.tokens_done is not None:
        status.eta_s = max(status.tokens_max - status.tokens_done, 0) / status.tokens_per_s
    return status


def run_folders(run_root: str) -> list[str]:
    """Run folders under ``run_root``: those with a ``checkpoints/`` folder or a ``metrics.csv``."""
    if not os.path.isdir(run_root):
        return []
    return sorted(os.path.join(run_root, n) for n in os.listdir(run_root)
                  if os.path.isdir(os.path.join(run_root, n, CHECKPOINTS_SUBDIR))
                  or os.path.isfile(os.path.join(run_root, n, METRICS_NAME)))


def format_age(seconds: Optional[float]) -> str:
    if seconds is None:
        return ''
    seconds = max(seconds, 0)
    if seconds < 120:
        return f'{seconds:.0f}s'
    if seconds < 7200:
        return f'{seconds / 60:.0f}m'
    return f'{seconds / 3600:.1f}h'


def status_table(statuses: Sequence[RunStatus]) -> str:
    """One row per run, as text."""
    import pandas as pd  # noqa: PLC0415  (only the table needs it)

    def number(x, fmt):
        return '' if x is None else format(x, fmt)

    rows = [{
        'run': s.run, 'state': s.state,
        'tokens': '' if s.tokens_done is None else (f'{s.tokens_done:,}' + (f' / {s.tokens_max:,}' if s.tokens_max else '')),
        'done': '' if not (s.tokens_max and s.tokens_done is not None) else f'{100 * s.tokens_done / s.tokens_max:.0f}%',
        'ckpt batch': number(s.checkpoint_batch, 'd'), 'ckpt age': format_age(s.checkpoint_age_s),
        'restarts': number(s.restarts, 'd'), 'train loss': number(s.train_loss, '.4f'), 'val NLL': number(s.val_nll, '.4f'),
        'lm-eval': s.lm_evals, 'tok/s': number(s.tokens_per_s, ',.0f'), 'ETA': format_age(s.eta_s), 'note': s.note,
    } for s in statuses]
    return pd.DataFrame(rows).to_string(index=False) if rows else '(no runs)'

