"""Composer ``Algorithm`` that injects prefix-aware (or uniform) smoothed targets into the loss.

Like Composer's ``LabelSmoothing``: at ``BEFORE_LOSS`` it puts the sparse target of every
position (``TargetTable.lookup`` of the next-token labels) into ``state.batch[SOFT_TARGETS_KEY]``,
and removes it at ``AFTER_LOSS``. The table is built once, at ``INIT``, from the model's
tokenizer. See ``objectives/targets.py`` for the math of each objective.
"""

from __future__ import annotations

import logging
import time

from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from prefix_composer.constants import IGNORE_INDEX, SOFT_TARGETS_KEY
from prefix_composer.objectives import ObjectiveSpec, TargetTable, build_target_table, token_byte_strings
from prefix_composer.objectives.labels import next_token_labels

log = logging.getLogger(__name__)


class PrefixSmoothing(Algorithm):
    """Train against the targets of ``objective`` (ce, label_smoothing, prefix_simple,
    prefix_softmax, prefix_softmax_norm) with smoothing mass ``eps``, temperature ``tau`` and
    softmax ``support`` (inclusive: over R(s); strict: over P(s)). Registered as ``prefix_smoothing``.
    """

    def __init__(self, objective: str = 'prefix_softmax', eps: float = 0.1, tau: float = 1.0, support: str = 'inclusive'):
        self.spec = ObjectiveSpec(objective=objective, eps=eps, tau=tau, support=support)
        self.table: TargetTable | None = None

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.BEFORE_LOSS, Event.AFTER_LOSS)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self.table = self._build(state)
        elif event == Event.BEFORE_LOSS:
            labels = next_token_labels(state.batch['labels']).reshape(-1)
            if self.table.ids.device != labels.device:
                self.table = self.table.to(labels.device)
            state.batch[SOFT_TARGETS_KEY] = self.table.lookup(labels, IGNORE_INDEX)
        elif event == Event.AFTER_LOSS:
            state.batch.pop(SOFT_TARGETS_KEY, None)

    def _build(self, state: State) -> TargetTable:
        tokenizer = getattr(state.model, 'tokenizer', None)
        if tokenizer is None:
            raise ValueError('PrefixSmoothing needs a model with a tokenizer (model: name: prefix_llama).')
        start = time.perf_counter()
        pieces, specials = token_byte_strings(tokenizer)
        table = build_target_table(pieces, specials, self.spec)
        with_mass = int((table.weights[:, 1:] > 0).any(dim=1).sum()) if table.weights.shape[1] > 1 else 0
        log.info(
            'PrefixSmoothing %s: target table %d ids x %d support slots built in %.2fs; %d gold ids smooth onto prefixes.',
            self.spec, table.ids.shape[0], table.ids.shape[1], time.perf_counter() - start, with_mass,
        )
        return table
