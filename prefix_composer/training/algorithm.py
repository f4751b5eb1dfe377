"""Composer ``Algorithm`` that injects prefix-aware (or uniform) smoothed targets into the loss.

Like Composer's ``LabelSmoothing``: at ``BEFORE_LOSS`` it puts the sparse target of every
position (``TargetTable.lookup`` of the next-token labels) into ``state.batch[SOFT_TARGETS_KEY]``,
and removes it at ``AFTER_LOSS``; at ``EVAL_BEFORE_FORWARD`` it puts the targets of the evaluation
batch there too, for the ``ObjectiveLoss`` validation metric (``metrics.py``). The table is built
once, at ``INIT``, from the model's tokenizer, at the largest eps of the run. See
``objectives/targets.py`` for the math of each objective.

``eps`` may be a schedule over training time (``objectives/schedule.py``, read by
``eps_schedule.objective_spec``): eps_t is a pure function of the trainer's timestamp (so a
resumed run continues it exactly), and the looked-up targets are moved toward one-hot by
``eps_t / eps_max`` (``TargetTable.lookup``): ``q_t = (1-eps_t)·onehot(y) + eps_t·r``. The eps in
force is logged at every batch start as ``objective/eps`` (a ``metrics.csv`` column).

Before the first batch is trained (``AFTER_DATALOADER`` of batch 1; not again after a resume) it
measures what the objective asks for on that batch (at its eps, the largest of a schedule), summed over all ranks: the mean off-gold
target mass and the mean target entropy over the scored positions (``objectives.stats``,
float64). Both go to the console and to the loggers as ``metrics/setup/...`` (a ``phase=setup``
row of ``metrics.csv``); a non-``ce`` objective whose off-gold mass is below
``warn_off_gold_below`` gets a one-line warning: it is plain cross-entropy on this data.
"""

from __future__ import annotations

import logging
import time

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from composer.utils import dist

from prefix_composer.constants import IGNORE_INDEX, SOFT_TARGETS_KEY, is_number
from prefix_composer.objectives import TargetTable, build_target_table, token_byte_strings
from prefix_composer.objectives.labels import next_token_labels
from prefix_composer.objectives.stats import PLAIN_CE_OFF_GOLD, per_id_stats
from prefix_composer.training.eps_schedule import elapsed, objective_spec

log = logging.getLogger(__name__)


class PrefixSmoothing(Algorithm):
    """Train against the targets of ``objective`` (ce, label_smoothing, prefix_simple,
    prefix_softmax, prefix_softmax_norm) with smoothing mass ``eps`` (a number or a schedule),
    temperature ``tau`` and softmax ``support`` (inclusive: over R(s); strict: over P(s)): an
    ``ObjectiveSpec``, whose defaults and checks apply (an omitted parameter is ``None``).
    Registered as ``prefix_smoothing``.
    ``warn_off_gold_below``: warn when the first batch's mean off-gold target mass is below this.
    """

    def __init__(self, objective: str = 'ce', eps=None, tau=None, support=None,
                 warn_off_gold_below: float = PLAIN_CE_OFF_GOLD):
        self.spec = objective_spec(objective, eps, tau, support)
        if not (is_number(warn_off_gold_below) and warn_off_gold_below >= 0):
            raise ValueError(f'algorithms.prefix_smoothing.warn_off_gold_below must be a number >= 0, got {warn_off_gold_below!r}.')
        self.warn_off_gold_below = float(warn_off_gold_below)
        self.table: TargetTable | None = None
        self.id_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.measured = False

    def match(self, event: Event, state: State) -> bool:
        return (event in (Event.INIT, Event.BATCH_START, Event.BEFORE_LOSS, Event.AFTER_LOSS, Event.EVAL_BEFORE_FORWARD)
                or (event == Event.AFTER_DATALOADER and not self.measured))

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self.table = self._build(state)
            self.id_stats = per_id_stats(self.table)
        elif event == Event.AFTER_DATALOADER:
            if int(state.timestamp.batch) == 0:  # a resumed run measured (and logged) it when it started
                self._measure(state, logger)
            self.measured = True
        elif event == Event.BATCH_START:
            logger.log_metrics({'objective/eps': self.spec.eps_at(elapsed(state))})
        elif event == Event.BEFORE_LOSS or (event == Event.EVAL_BEFORE_FORWARD and 'labels' in state.batch):
            labels = next_token_labels(state.batch['labels']).reshape(-1)
            if self.table.ids.device != labels.device:
                self.table = self.table.to(labels.device)
            state.batch[SOFT_TARGETS_KEY] = self.table.lookup(labels, IGNORE_INDEX, self.eps_scale(state))
        elif event == Event.AFTER_LOSS:
            state.batch.pop(SOFT_TARGETS_KEY, None)

    def eps_scale(self, state: State) -> float:
        """eps_t / eps_max: the factor ``TargetTable.lookup`` moves the table's targets toward one-hot by."""
        peak = self.spec.peak_eps
        return self.spec.eps_at(elapsed(state)) / peak if peak > 0 else 1.0

    def _measure(self, state: State, logger: Logger) -> None:
        """Mean off-gold mass and entropy of the targets of this batch's scored positions (all ranks)."""
        labels = next_token_labels(state.batch['labels']).reshape(-1)
        off_gold, entropy = self.id_stats
        scored = labels[labels != IGNORE_INDEX].cpu()
        scored = scored[(scored >= 0) & (scored < len(off_gold))]  # other ids: the model's forward names them
        totals = torch.tensor([off_gold[scored].sum(), entropy[scored].sum(), scored.numel()], dtype=torch.float64,
                              device=labels.device)
        dist.all_reduce(totals)
        mass, ent, n = (float(x) for x in totals.cpu())
        mass, ent = mass / max(n, 1.0), ent / max(n, 1.0)
        logger.log_metrics({'metrics/setup/target_off_gold_mass': mass, 'metrics/setup/target_entropy': ent,
                            'metrics/setup/target_positions': n})
        log.info('PrefixSmoothing %s on the first batch (%d positions): mean off-gold target mass %.6g, mean target '
                 'entropy %.6g nats.', self.spec, n, mass, ent)
        if self.spec.objective != 'ce' and mass < self.warn_off_gold_below:
            log.warning('PrefixSmoothing objective=%s eps=%s tau=%g support=%s: mean off-gold target mass %.3g < %g on '
                        'the first batch: this objective is plain cross-entropy on this data.', self.spec.objective,
                        self.spec.eps, self.spec.tau, self.spec.support, mass, self.warn_off_gold_below)

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
