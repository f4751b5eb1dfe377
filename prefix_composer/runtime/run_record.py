"""How the last start of a run ended: ``<save_folder>/last_start.json`` (global rank 0, atomic writes).

Written when a start has the run folder's lock (``launch.preflight``), with ``state: running``, and
rewritten when the process leaves training::

    format:   "prefix_composer.last_start/1"
    run_name, host, pid, started, ended (UTC)
    starts:   how many starts the folder has recorded, this one included (restarts = starts - 1)
    state:    running | finished | preempted | diverged | failed
    checkpoint_batch: the newest checkpoint in the folder when the process left (null: none)
    error:    "<type>: <message>" of a failed or diverged start (first ERROR_CHARS characters)
    diverged: the divergence (``TrainingDiverged.summary()``) while it is unresolved
    divergences: every divergence the folder has seen, with the start that hit it

``state`` comes from how training ended: returned (finished), ``SystemExit`` 0 (``graceful_preemption``
after SIGTERM) or 143 (Composer's own SIGTERM exit) (preempted), ``TrainingDiverged`` (diverged),
any other exception (failed). A process killed outright (SIGKILL, OOM, a lost node) cannot write:
its record keeps ``running`` while no process holds the run lock (``scripts/sweep.py status``
reads it so). A start that another live run keeps out writes nothing.

A folder whose last start diverged refuses the next start (``RunDiverged``) unless it passes
``allow_diverged_resume=true``, which is taken off the config before llm-foundry sees it.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from omegaconf import DictConfig

from prefix_composer.files import read_json, write_json_atomic
from prefix_composer.runtime.checkpoints import newest_checkpoint
from prefix_composer.runtime.divergence import TrainingDiverged
from prefix_composer.runtime.experiment import utc_now

log = logging.getLogger(__name__)

RECORD_NAME = 'last_start.json'
RECORD_FORMAT = 'prefix_composer.last_start/1'
ALLOW_KEY = 'allow_diverged_resume'
ERROR_CHARS = 500
PREEMPTED_EXIT_CODES = (0, 143)  # graceful_preemption's exit; Composer's sys.exit(128 + SIGTERM)
STATES = ('running', 'finished', 'preempted', 'diverged', 'failed')


class RunDiverged(ValueError):
    """The run folder's last start diverged and this start did not pass ``allow_diverged_resume=true``."""


def take_allow_diverged_resume(cfg: DictConfig) -> bool:
    """Remove ``allow_diverged_resume`` from ``cfg`` (llm-foundry refuses unknown top-level keys); its value."""
    allow = cfg.pop(ALLOW_KEY, False)
    if not isinstance(allow, bool):
        raise ValueError(f'{ALLOW_KEY} must be true or false, got {allow!r}.')
    return allow


def read_record(folder: str) -> Optional[dict[str, Any]]:
    """``<folder>/last_start.json``, or None if the folder has none."""
    path = os.path.join(folder, RECORD_NAME)
    if not os.path.isfile(path):
        return None
    return read_json(path, 'last-start record',
                     'it only says how the last start ended: delete it, and the next start writes a new one.')


def error_summary(error: BaseException) -> str:
    return f'{type(error).__name__}: {error}'[:ERROR_CHARS]


def outcome(error: Optional[BaseException]) -> str:
    """The ``state`` a start ends in when training raised ``error`` (None: it returned)."""
    if error is None:
        return 'finished'
    if isinstance(error, TrainingDiverged):
        return 'diverged'
    if isinstance(error, SystemExit) and (error.code or 0) in PREEMPTED_EXIT_CODES:
        return 'preempted'
    return 'failed'


def check_not_diverged(folder: str, record: Optional[dict[str, Any]], allow: bool) -> None:
    """Refuse to start on a folder whose last start diverged, unless ``allow``."""
    diverged = (record or {}).get('diverged')
    if not diverged:
        return
    if not allow:
        raise RunDiverged(
            f'{folder}: the last start diverged at batch {diverged["batch"]} ({diverged["metric"]} = {diverged["value"]}; '
            f'last finite loss {diverged["last_finite_loss"]} at batch {diverged["last_finite_batch"]}). Resuming would '
            f'diverge again: change what diverged (e.g. optimizer.lr) and add {ALLOW_KEY}=true to resume from the newest '
            f'checkpoint (batch {newest_checkpoint(folder)[0]}), or start a new run folder with run_name=<new name>.')
    log.warning('%s=true: resuming %s, whose last start diverged at batch %s.', ALLOW_KEY, folder, diverged['batch'])


@contextmanager
def recorded_start(folder: str, run_name: str, allow_diverged: bool = False) -> Iterator[None]:
    """Check the folder did not diverge (``check_not_diverged``), record this start as running, and
    record how the block ends (its exception is re-raised)."""
    previous = read_record(folder)
    check_not_diverged(folder, previous, allow_diverged)
    record = {'format': RECORD_FORMAT, 'run_name': run_name, 'host': socket.gethostname(), 'pid': os.getpid(),
              'started': utc_now(), 'ended': None, 'starts': int((previous or {}).get('starts', 0)) + 1,
              'state': 'running', 'checkpoint_batch': newest_checkpoint(folder)[0], 'error': None,
              'diverged': None, 'divergences': list((previous or {}).get('divergences', []))}
    write_json_atomic(os.path.join(folder, RECORD_NAME), record)
    error: Optional[BaseException] = None
    try:
        yield
    except BaseException as e:
        error = e
        raise
    finally:
        record.update(state=outcome(error), ended=utc_now(), checkpoint_batch=newest_checkpoint(folder)[0])
        if record['state'] in ('failed', 'diverged'):
            record['error'] = error_summary(error)
        if isinstance(error, TrainingDiverged):
            record['diverged'] = error.summary()
            record['divergences'].append({'start': record['starts'], **error.summary()})
        write_json_atomic(os.path.join(folder, RECORD_NAME), record)
