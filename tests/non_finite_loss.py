"""Test-only Composer callback ``inject_non_finite_loss``: multiplies the loss of batch ``at_batch``
(1-based) by ``value`` (NaN by default) at ``Event.AFTER_LOSS``, so its backward pass makes the
gradients and then the weights non-finite, as a real divergence does. ``tests/test_divergence.py``
registers it in llm-foundry's ``callbacks`` registry through an entry point of a throw-away
distribution on ``PYTHONPATH``, so the real ``composer train.py`` builds it from the YAML."""

from __future__ import annotations

from composer.core import Callback, State
from composer.loggers import Logger


class InjectNonFiniteLoss(Callback):

    def __init__(self, at_batch: int, value: float = float('nan')):
        self.at_batch = int(at_batch)
        self.value = float(value)

    def after_loss(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) + 1 != self.at_batch:
            return
        if isinstance(state.loss, dict):
            state.loss = {k: v * self.value for k, v in state.loss.items()}
        else:
            state.loss = state.loss * self.value
