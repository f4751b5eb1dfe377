"""Validation metrics beside the NLL, read from sparse target tables (torchmetrics, the Composer way).

For a position with logits ``z``, gold ``y`` (byte string ``s``), ``lse = logsumexp(z)`` and
``p_i = exp(z_i - lse)``, averaged over the positions whose label is not the ignore index:

* ``PrefixMassStrict``     ``p(P(s)) = Σ_{i∈P(s)} p_i``: the mass on the gold token's strict prefixes;
* ``PrefixMassInclusive``  ``p(R(s)) = p(P(s)) + p_y``;
* ``ObjectiveLoss``        the run's own training objective ``-Σ_i q_i·log p_i`` with the target ``q``
  the ``PrefixSmoothing`` algorithm puts in the batch (one-hot without it: then it equals the NLL).

``P(s)`` comes from ``objectives.prefix_indicator_table`` of the model's tokenizer, so both prefix
masses depend on the vocabulary only: for the same weights they are equal whatever the run's
objective. Every metric reads only ``lse`` (row chunk by row chunk) and the few logits its sparse
table names: no [tokens x vocab] tensor is allocated besides the logits.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, Mapping, Optional

import torch
from torchmetrics import Metric
from transformers import PreTrainedTokenizerBase

from prefix_composer.constants import IGNORE_INDEX, SOFT_TARGETS_KEY
from prefix_composer.losses.soft_target import chunk_rows
from prefix_composer.objectives import SparseTargets, TargetTable, prefix_indicator_table, token_byte_strings
from prefix_composer.objectives.labels import one_hot_targets

log = logging.getLogger(__name__)


class VocabularyPrefixes:
    """The ``prefix_indicator_table`` of a vocabulary, built on first use (once per device).

    ``vocabulary()`` returns ``(pieces, specials)`` (``objectives.token_byte_strings``); use
    ``of_tokenizer``. Shared, not copied, by ``deepcopy`` (Composer copies the metrics for every
    evaluator): the table is immutable once built.
    """

    def __init__(self, vocabulary: Callable[[], tuple[list[bytes], set[int]]]):
        self.vocabulary = vocabulary
        self._tables: dict[torch.device, TargetTable] = {}

    @classmethod
    def of_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> 'VocabularyPrefixes':
        return cls(functools.partial(token_byte_strings, tokenizer))

    def __deepcopy__(self, memo: dict) -> 'VocabularyPrefixes':
        return self

    def table(self, device: torch.device) -> TargetTable:
        if device not in self._tables:
            cpu = self._tables.get(torch.device('cpu'))
            if cpu is None:
                start = time.perf_counter()
                cpu = self._tables[torch.device('cpu')] = prefix_indicator_table(*self.vocabulary())
                log.info('Prefix-mass metrics: strict-prefix table %d ids x %d slots built in %.2fs.',
                         cpu.ids.shape[0], cpu.ids.shape[1], time.perf_counter() - start)
            self._tables[device] = cpu.to(device)
        return self._tables[device]


def flat_logits(output: Any) -> torch.Tensor:
    """The [N, V] logits of a model output (a tensor or a mapping with ``logits``)."""
    logits = output['logits'] if isinstance(output, Mapping) else output
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f'Expected logits as a tensor or a mapping with "logits", got {type(output).__name__}.')
    return logits.reshape(-1, logits.shape[-1])


def log_partition(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of every row in float32 (float64 for float64 logits), row chunk by row chunk."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    step = chunk_rows(logits.shape[1], logits.device)
    return torch.cat([torch.logsumexp(logits[r:r + step].to(acc), dim=-1) for r in range(0, logits.shape[0], step)])


def sparse_log_probs(logits: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log p`` at ``ids`` [N, K]: ``z[ids] - lse``."""
    return logits.gather(1, ids).to(lse.dtype) - lse[:, None]


class _MeanOverPositions(Metric):
    """Sum of a per-position value over the non-ignored positions, divided by their count (float64)."""

    full_state_update = False

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index
        self.add_state('total', default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx='sum')
        self.add_state('count', default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx='sum')

    def accumulate(self, values: torch.Tensor, valid: torch.Tensor) -> None:
        self.total += torch.where(valid, values, 0.0).sum().to(torch.float64)
        self.count += valid.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


class _PrefixMass(_MeanOverPositions):
    include_gold = False

    def __init__(self, prefixes: VocabularyPrefixes, ignore_index: int = IGNORE_INDEX):
        super().__init__(ignore_index)
        self.prefixes = prefixes

    def update(self, output: Any, target: torch.Tensor) -> None:
        logits, labels = flat_logits(output), target.reshape(-1)
        valid = labels != self.ignore_index
        rows = self.prefixes.table(logits.device).lookup(labels, self.ignore_index)
        lse = log_partition(logits)
        mass = (rows.weights.to(lse.dtype) * sparse_log_probs(logits, lse, rows.ids).exp()).sum(dim=-1)
        if self.include_gold:
            mass = mass + sparse_log_probs(logits, lse, labels.masked_fill(~valid, 0)[:, None]).exp().squeeze(1)
        self.accumulate(mass, valid)


class PrefixMassStrict(_PrefixMass):
    """Mean probability on the gold token's strict prefixes ``P(s)`` (0 where ``P(s) = ∅``)."""

    include_gold = False


class PrefixMassInclusive(_PrefixMass):
    """Mean probability on ``R(s) = P(s) ∪ {y}``."""

    include_gold = True


class ObjectiveLoss(_MeanOverPositions):
    """Mean ``-Σ_k w_k·log p[id_k] - u·Σ_{i<U} log p_i`` for the batch's ``SparseTargets``
    (``batch[SOFT_TARGETS_KEY]``, put there by ``PrefixSmoothing``; one-hot if absent)."""

    needs_batch = True  # Composer's HuggingFaceModel.update_metric passes batch=, outputs=, labels=

    def update(self, batch: Mapping[str, Any], outputs: Any, labels: torch.Tensor) -> None:
        logits, labels = flat_logits(outputs), labels.reshape(-1)
        valid = labels != self.ignore_index
        targets: Optional[SparseTargets] = batch.get(SOFT_TARGETS_KEY)
        if targets is None:
            targets = one_hot_targets(labels)
        if targets.ids.shape[0] != labels.shape[0]:
            raise ValueError(f'{SOFT_TARGETS_KEY} holds {targets.ids.shape[0]} target rows for {labels.shape[0]} labels.')
        lse = log_partition(logits)
        loss = -(targets.weights.to(lse.dtype) * sparse_log_probs(logits, lse, targets.ids)).sum(dim=-1)
        if targets.uniform_mass:
            u, n = targets.uniform_mass, targets.uniform_count
            step = chunk_rows(logits.shape[1], logits.device)
            head = torch.cat([logits[r:r + step, :n].sum(dim=-1, dtype=lse.dtype) for r in range(0, logits.shape[0], step)])
            loss = loss - u * (head - n * lse)
        self.accumulate(loss, valid)
