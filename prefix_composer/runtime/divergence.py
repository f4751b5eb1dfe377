"""Divergence stop: a non-finite training loss or gradient ends the run before its next checkpoint.

Once the loss is NaN/inf the weights are (or soon will be) too, and every later checkpoint
rotates a finite one away (``save_num_checkpoints_to_keep``). ``DivergenceStop`` (callback
``divergence_stop``) checks at ``Event.BATCH_END``, which Composer runs before the batch's
evaluation and ``Event.BATCH_CHECKPOINT``:

* every value of ``state.total_loss_dict`` (Composer's all-reduced mean of each loss over the
  ranks: ``loss/train/total`` and the objective's parts), and
* the global L2 norm of the gradients of this batch (still held until the next batch zeroes
  them), skipped under ``amp_fp16``, whose grad scaler skips steps with inf gradients by design.

All ranks all-reduce (MAX) one "not finite" flag, so they stop together; the check raises
``TrainingDiverged`` naming the batch, the metric, its value and the last finite loss with its
batch. ``launch.main`` records it in ``<save_folder>/last_start.json`` (``run_record``), and a
restart is refused until ``allow_diverged_resume=true`` says to resume anyway (e.g. with a lower
learning rate).

llm-foundry's ``kill_loss_spike`` does not fit: it compares losses with a running mean and a cap
(``nan >= x`` and ``nan > cap`` are both false, so a NaN loss is never caught), starts only after a
window of at least 100 batches, and ignores gradients.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from composer.core import Callback, Precision, State
from composer.loggers import Logger
from composer.utils import dist

log = logging.getLogger(__name__)

TOTAL_LOSS_KEY = 'loss/train/total'
GRAD_NORM_KEY = 'grad_norm/global'  # the name this callback gives the gradient norm in its error


class TrainingDiverged(RuntimeError):
    """A training loss or the gradient norm was not finite at ``batch`` (1-based: the batch just trained)."""

    def __init__(self, batch: int, metric: str, value: float, last_finite_batch: Optional[int],
                 last_finite_loss: Optional[float]):
        self.batch, self.metric, self.value = batch, metric, value
        self.last_finite_batch, self.last_finite_loss = last_finite_batch, last_finite_loss
        last = ('no finite loss before it' if last_finite_batch is None else
                f'last finite {TOTAL_LOSS_KEY} {last_finite_loss:.6g} at batch {last_finite_batch}')
        super().__init__(f'Training diverged at batch {batch}: {metric} = {value} ({last}). Stopped before this '
                         'batch\'s checkpoint, so the newest checkpoint holds finite weights. Lower the learning rate '
                         '(or change what diverged) and restart with allow_diverged_resume=true to resume from it.')

    def summary(self) -> dict:
        return {'batch': self.batch, 'metric': self.metric, 'value': repr(self.value),
                'last_finite_batch': self.last_finite_batch, 'last_finite_loss': self.last_finite_loss}


def gradient_norm(model: torch.nn.Module) -> float:
    """Global L2 norm of this rank's gradients (0.0 without any)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


class DivergenceStop(Callback):
    """Raise ``TrainingDiverged`` at the end of a batch whose loss or gradient norm is not finite;
    registered as ``divergence_stop``.

    Args:
        check_gradients: also check the gradient norm (one norm over all gradients per batch).
    """

    def __init__(self, check_gradients: bool = True):
        if not isinstance(check_gradients, bool):
            raise ValueError(f'callbacks.divergence_stop.check_gradients must be true or false, got {check_gradients!r}.')
        self.check_gradients = check_gradients
        self.last_finite_batch: Optional[int] = None
        self.last_finite_loss: Optional[float] = None

    def non_finite(self, state: State) -> Optional[tuple[str, float]]:
        """(metric, value) of the first non-finite loss or gradient norm of this rank's batch, or None."""
        losses = state.total_loss_dict or {}
        for name, value in sorted(losses.items(), key=lambda item: item[0] != TOTAL_LOSS_KEY):  # the total first
            if not math.isfinite(float(value)):
                return name, float(value)
        if self.check_gradients and state.precision != Precision.AMP_FP16:
            norm = gradient_norm(state.model)
            if not math.isfinite(norm):
                return GRAD_NORM_KEY, norm
        return None

    def batch_end(self, state: State, logger: Logger) -> None:
        found = self.non_finite(state)
        flag = state.device.tensor_to_device(torch.tensor([int(found is not None)], dtype=torch.int32))
        dist.all_reduce(flag, reduce_operation='MAX')
        batch = int(state.timestamp.batch)
        if flag.item():
            metric, value = found if found is not None else ('another rank\'s loss or gradient norm', math.nan)
            raise TrainingDiverged(batch, metric, value, self.last_finite_batch, self.last_finite_loss)
        loss = (state.total_loss_dict or {}).get(TOTAL_LOSS_KEY)
        if loss is not None:
            self.last_finite_batch, self.last_finite_loss = batch, float(loss)
