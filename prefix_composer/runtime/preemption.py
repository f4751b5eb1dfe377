"""Graceful preemption: on SIGTERM finish the current batch, checkpoint it, exit 0.

Run:ai (Kubernetes) preempts a job by sending SIGTERM to the container's PID 1, waiting its grace
period, then SIGKILL. Composer's default on SIGTERM is ``sys.exit(143)`` wherever the training
loop is, losing everything since the last interval checkpoint. ``GracefulPreemption`` (callback
``graceful_preemption``) instead:

* replaces the rank's SIGTERM handler with one that only records the signal;
* at every ``Event.BATCH_CHECKPOINT`` all-reduces that flag (MAX), so every rank stops after the
  same batch; if set, it saves this batch's checkpoint through the Trainer's saver (unless the
  interval save already did), logs the time since the signal (warning above ``grace_seconds``),
  and exits 0 at the next event, after the loggers have flushed this batch's rows;
* makes every ``lm_eval`` callback ask the same all-reduced flag while tokenising and before each
  forward batch (``LMEvalCallback.stop_when``), so a long evaluation at ``BATCH_END`` stops within
  one forward batch of the signal; its batch is checkpointed as above and the evaluation runs
  again after the restart;
* before the first batch of the process (start-up, or an interrupted evaluation run again at
  ``FIT_START``) checks the flag once more and exits 0 with nothing new to save;
* makes the Trainer's ``CheckpointSaver`` an ``AtomicCheckpointSaver`` (see ``checkpoints.py``);
* carries the RNG states of all ranks in its checkpoint state and restores them before the first
  batch after a mid-epoch resume (Composer restores RNG only at epoch starts or when it spins the
  dataloader, not when a StreamingDataset resumes itself mid-epoch).

The launcher side (SIGTERM to the launcher, forwarded to the ranks) is ``launcher.py``.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any, Optional

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist, reproducibility

from prefix_composer.constants import is_number
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.runtime.checkpoints import AtomicCheckpointSaver

log = logging.getLogger(__name__)


class GracefulPreemption(Callback):
    """SIGTERM -> checkpoint after the current batch on all ranks -> exit 0; registered as ``graceful_preemption``.

    Args:
        grace_seconds: the preemption grace period of the cluster (Run:ai/Kubernetes default 30 s).
            A warning is logged when signal-to-saved takes longer, i.e. the checkpoint would have
            been cut off by SIGKILL.
    """

    def __init__(self, grace_seconds: float = 30.0):
        if not (is_number(grace_seconds) and grace_seconds > 0):
            raise ValueError(f'callbacks.graceful_preemption.grace_seconds must be a number of seconds > 0, got {grace_seconds!r}.')
        self.grace_seconds = float(grace_seconds)
        self.signal_time: Optional[float] = None
        self.saver: Optional[CheckpointSaver] = None
        self.previous_handler: Any = None
        self.exit_pending = False
        self.first_batch_started = False
        self.resumed_rng: Optional[list[dict[str, Any]]] = None

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if self.signal_time is None:
            self.signal_time = time.monotonic()

    # -- Composer hooks -------------------------------------------------------------------
    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if self.exit_pending and event != Event.BATCH_CHECKPOINT:
            self.exit(state)
        super().run_event(event, state, logger)

    def init(self, state: State, logger: Logger) -> None:
        savers = [cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)]
        if not savers:
            raise ValueError('graceful_preemption needs checkpoints: set save_folder (and autoresume: true).')
        for saver in savers:
            if type(saver) is CheckpointSaver:
                saver.__class__ = AtomicCheckpointSaver  # same object the Trainer holds, atomic saves
        self.saver = savers[0]
        for callback in state.callbacks:
            if isinstance(callback, LMEvalCallback):
                callback.stop_when(self.stop_agreed)
        self.previous_handler = signal.signal(signal.SIGTERM, self.on_sigterm)

    def fit_start(self, state: State, logger: Logger) -> None:
        composer_restores_rng = int(state.timestamp.batch_in_epoch) == 0 or 'train' not in state.dataset_resumption
        if composer_restores_rng:
            self.resumed_rng = None

    def after_dataloader(self, state: State, logger: Logger) -> None:
        if self.resumed_rng is not None:
            reproducibility.load_rng_state(self.resumed_rng)
            self.resumed_rng = None

    def batch_start(self, state: State, logger: Logger) -> None:
        if not self.first_batch_started:
            self.first_batch_started = True
            if self.stop_agreed(state):  # SIGTERM during start-up or FIT_START's evaluation: nothing new to save
                self.exit(state)

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        if not self.stop_agreed(state):
            return
        assert self.saver is not None
        if self.saver.last_checkpoint_batch != state.timestamp.batch:
            self.saver._save_checkpoint(state, logger)
        self.exit_pending = True

    def close(self, state: State, logger: Logger) -> None:
        # After a SIGTERM the process is on its way out: keep ignoring repeated SIGTERMs to the end
        # (the previous handler, Composer's, would exit 143 in the middle of the exit).
        if self.previous_handler is not None and self.signal_time is None:
            signal.signal(signal.SIGTERM, self.previous_handler)
            self.previous_handler = None

    def state_dict(self) -> dict[str, Any]:
        """RNG states of all ranks at save time (an all-gather: Composer builds it on every rank)."""
        return {'rng': reproducibility.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed_rng = state.get('rng')

    # -- helpers --------------------------------------------------------------------------
    def stop_agreed(self, state: State) -> bool:
        """Whether any rank got SIGTERM (all-reduce MAX, so all ranks answer the same)."""
        flag = state.device.tensor_to_device(torch.tensor([int(self.signal_time is not None)], dtype=torch.int32))
        dist.all_reduce(flag, reduce_operation='MAX')
        return bool(flag.item())

    def exit(self, state: State) -> None:
        waited = time.monotonic() - self.signal_time if self.signal_time is not None else 0.0
        report = log.warning if waited > self.grace_seconds else log.info
        report('Preempted: stopping at batch %d with its checkpoint saved, %.1f s after SIGTERM (grace %.0f s).',
               int(state.timestamp.batch), waited, self.grace_seconds)
        sys.exit(0)

