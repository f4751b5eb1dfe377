"""Sparse soft targets of the five training objectives (docs/design.md), one row per gold id.

Notation: gold id ``y``, ``s`` its byte string, ``P(s)`` the non-special ids whose bytes are a
*strict* non-empty prefix of ``s``, ``R(s) = P(s) ∪ {y}``, smoothing mass ``eps``, temperature
``tau``, ``Vt = len(tokenizer)``.

=====================  ==========================================================================
objective              target distribution q over the vocabulary
=====================  ==========================================================================
ce                     one-hot(y)
label_smoothing        q_y = 1-eps, every other id < Vt gets eps/(Vt-1) (special ids included)
prefix_simple          one-hot if P(s)=∅, else q_y = 1-eps and eps/|P(s)| on each prefix
prefix_softmax         (1-eps)·one-hot(y) + eps·softmax_{i∈R(s)}(len_i / tau)
prefix_softmax_norm    same with score len_i / len(s) / tau
=====================  ==========================================================================

``support='strict'`` runs the two softmax objectives over ``P(s)`` instead of ``R(s)`` (an
ablation; docs/design.md says why ``inclusive`` is the default); with ``P(s)=∅`` the target is one-hot.
Special gold ids are one-hot under the prefix objectives. Ids ``>= Vt`` (embedding padding)
never get mass.

Every row is stored sparsely: ``ids[y, :]`` / ``weights[y, :]`` hold the support (column 0 is
``y`` itself, padding repeats ``y`` with weight 0), and ``label_smoothing``'s dense part is the
closed form ``uniform_mass`` on each of the ids ``0 .. uniform_count-1``, so that

    q(y) = Σ_k weights[y,k]·one_hot(ids[y,k]) + uniform_mass·1[i < uniform_count].

No [tokens × vocab] tensor is ever built.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from typing import Mapping

import numpy as np
import torch

from prefix_composer.constants import is_number
from prefix_composer.objectives.schedule import EpsSchedule

OBJECTIVES = ('ce', 'label_smoothing', 'prefix_simple', 'prefix_softmax', 'prefix_softmax_norm')
SUPPORTS = ('inclusive', 'strict')
OBJECTIVE_KEY = 'algorithms.prefix_smoothing'  # where a run's YAML sets the objective and its parameters
# The hyper-parameters each objective's target reads (build_target_table).
OBJECTIVE_PARAMETERS = {
    'ce': (),
    'label_smoothing': ('eps',),
    'prefix_simple': ('eps',),
    'prefix_softmax': ('eps', 'tau', 'support'),
    'prefix_softmax_norm': ('eps', 'tau', 'support'),
}
# The value of a parameter that the objective does not read (what it acts as), which is also the
# default of tau and support where they are read; eps has no default where it is read.
NEUTRAL = {'eps': 0.0, 'tau': 1.0, 'support': 'inclusive'}


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """A training objective with its hyper-parameters: the one definition of what
    ``algorithms.prefix_smoothing`` takes (the ``PrefixSmoothing`` algorithm, the YAML generator and
    the scripts build it).

    ``None`` = omitted. On construction the spec is validated and the omitted parameters are filled
    in: an objective that reads eps needs it (a number in [0, 1] or an ``EpsSchedule``); tau (a
    finite number > 0) and support (inclusive or strict) default to 1.0 and inclusive; a parameter
    the objective does not read (``OBJECTIVE_PARAMETERS``) takes its ``NEUTRAL`` value, and giving
    it any other value is refused (it would have no effect). Errors name the YAML key
    (``algorithms.prefix_smoothing.<name>``), the value given and the fix.
    """

    objective: str = 'ce'
    eps: float | EpsSchedule | None = None
    tau: float | None = None
    support: str | None = None

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f'{OBJECTIVE_KEY}.objective: unknown objective {self.objective!r}; choose one of '
                             f'{", ".join(OBJECTIVES)}.')
        used = OBJECTIVE_PARAMETERS[self.objective]
        for name in NEUTRAL:
            value = getattr(self, name)
            if value is None:
                if name == 'eps' and name in used:
                    raise ValueError(f'{OBJECTIVE_KEY}.eps is missing: objective {self.objective!r} reads it; set it to '
                                     'a number in [0, 1] or a schedule (yamls/README.md).')
                object.__setattr__(self, name, NEUTRAL[name])
            elif name not in used and value != NEUTRAL[name]:
                readers = ', '.join(o for o, params in OBJECTIVE_PARAMETERS.items() if name in params)
                shown = value.to_config() if isinstance(value, EpsSchedule) else value
                raise ValueError(f'{OBJECTIVE_KEY}.{name}={shown!r} has no effect on objective {self.objective!r}; '
                                 f'remove {OBJECTIVE_KEY}.{name} (or set it to {NEUTRAL[name]!r}) or use an objective '
                                 f'that reads {name} ({readers}).')
        if not (isinstance(self.eps, EpsSchedule) or (is_number(self.eps) and 0.0 <= self.eps <= 1.0)):
            raise ValueError(f'{OBJECTIVE_KEY}.eps must be a number in [0, 1] or a schedule '
                             f'({{schedule: ptp, value: 0.2, t1: 0.333dur, t2: 0.667dur}}), got {self.eps!r}.')
        if not (is_number(self.tau) and self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f'{OBJECTIVE_KEY}.tau must be a finite number > 0, got {self.tau!r}.')
        if self.support not in SUPPORTS:
            raise ValueError(f'{OBJECTIVE_KEY}.support must be one of {", ".join(SUPPORTS)}, got {self.support!r}.')

    @property
    def peak_eps(self) -> float:
        """The largest eps of the run: eps itself, or the schedule's maximum (the target table's eps)."""
        return self.eps.peak if isinstance(self.eps, EpsSchedule) else float(self.eps)

    def eps_at(self, elapsed: Mapping[str, float]) -> float:
        """eps in force at the training time ``elapsed`` (``{unit: time trained}``, see ``objectives.schedule``)."""
        return self.eps.at(elapsed) if isinstance(self.eps, EpsSchedule) else float(self.eps)

    def to_config(self, complete: bool = False) -> dict:
        """The ``algorithms.prefix_smoothing`` mapping: the objective and the parameters it reads, or with
        ``complete`` every parameter (the unread ones at their neutral value), so that it can override a
        block written for another objective key by key."""
        names = NEUTRAL if complete else OBJECTIVE_PARAMETERS[self.objective]
        config = {'objective': self.objective}
        for name in names:
            value = getattr(self, name)
            config[name] = value.to_config() if isinstance(value, EpsSchedule) else value
        return config


@dataclasses.dataclass
class TargetTable:
    """Per-gold-id sparse target rows plus the closed-form uniform part (see module docstring)."""

    ids: torch.Tensor  # [Vt, K] int64
    weights: torch.Tensor  # [Vt, K] float32
    uniform_mass: float = 0.0
    uniform_count: int = 0
    width: torch.Tensor = None  # [Vt] int64: columns up to the row's last non-zero weight

    def __post_init__(self):
        if self.width is None:
            nonzero = (self.weights != 0) * torch.arange(1, self.weights.shape[1] + 1)
            self.width = nonzero.max(dim=1).values.clamp_min(1)

    def to(self, device: torch.device | str) -> 'TargetTable':
        return dataclasses.replace(self, ids=self.ids.to(device), weights=self.weights.to(device), width=self.width.to(device))

    def lookup(self, labels: torch.Tensor, ignore_index: int = -100, scale: float = 1.0) -> 'SparseTargets':
        """Target rows for a tensor of gold labels; ignored positions get the row of id 0.

        Only the first ``max width`` columns of the batch's rows are gathered (the columns cut
        off have weight 0 in every row of the batch), so a batch pays for its longest support,
        not for the vocabulary's widest row.

        ``scale`` = eps_t / eps (in [0, 1]) moves the targets toward one-hot: the table holds
        ``q = (1-eps)·onehot(y) + eps·r`` (r the objective's smoothing distribution: the prefix
        softmax or simple split, for label smoothing the uniform part over the other ids), which
        is affine in eps, so ``q_t = (1-eps_t)·onehot(y) + eps_t·r = onehot(y) + scale·(q - onehot(y))``:
        every sparse weight and the uniform mass times ``scale``, plus ``1 - scale`` on the gold
        column 0. Rows without smoothing (one-hot) stay one-hot; the table is never rebuilt.
        """
        safe = labels.masked_fill(labels == ignore_index, 0)
        k = int(self.width[safe].max()) if safe.numel() else 1
        weights = self.weights[:, :k][safe]
        if scale != 1.0:
            weights = weights * scale
            weights[..., 0] += 1.0 - scale
        return SparseTargets(self.ids[:, :k][safe], weights, self.uniform_mass * scale, self.uniform_count)


@dataclasses.dataclass
class SparseTargets:
    """Targets of a batch of positions: ``ids``/``weights`` of shape [..., K] plus the uniform part."""

    ids: torch.Tensor
    weights: torch.Tensor
    uniform_mass: float = 0.0
    uniform_count: int = 0


def strict_prefix_ids(pieces: list[bytes], specials: set[int]) -> list[list[int]]:
    """For every id, the non-special ids whose bytes are a strict non-empty prefix, shortest first.

    Special gold ids get no prefixes (they are one-hot under the prefix objectives).
    """
    index = {p: i for i, p in enumerate(pieces) if i not in specials and p}
    out: list[list[int]] = []
    for i, p in enumerate(pieces):
        if i in specials:
            out.append([])
            continue
        out.append([index[p[:k]] for k in range(1, len(p)) if p[:k] in index])
    return out


def build_target_table(pieces: list[bytes], specials: set[int], spec: ObjectiveSpec) -> TargetTable:
    """The sparse target of every gold id ``0 .. len(pieces)-1`` under ``spec``, at its largest eps
    (``spec.peak_eps``; a schedule scales it down per batch in ``TargetTable.lookup``)."""
    vt = len(pieces)
    eps = spec.peak_eps
    gold = np.arange(vt, dtype=np.int64)

    if spec.objective == 'ce' or eps == 0.0:
        return _table(gold[:, None], np.ones((vt, 1)))
    if spec.objective == 'label_smoothing':
        mass = eps / (vt - 1)
        # q_y = (1-eps) = (1-eps-mass) sparse + mass from the uniform closed form.
        return _table(gold[:, None], np.full((vt, 1), 1.0 - eps - mass), uniform_mass=mass, uniform_count=vt)

    ids, member = _prefix_columns(pieces, specials)
    has_prefix = member[:, 1:].any(axis=1)

    if spec.objective == 'prefix_simple':
        n = member.sum(axis=1, keepdims=True)
        smooth = np.where(member, eps / np.maximum(n, 1), 0.0)
    else:
        byte_len = np.array([len(p) for p in pieces], dtype=np.float64)
        score = byte_len[ids]
        if spec.objective == 'prefix_softmax_norm':
            score = score / np.maximum(byte_len[:, None], 1.0)
        in_support = member.copy()
        in_support[:, 0] = spec.support == 'inclusive'
        smooth = eps * _masked_softmax(score / spec.tau, in_support)

    weights = np.zeros(ids.shape)
    weights[:, 0] = 1.0 - eps
    weights += smooth
    weights[~has_prefix] = 0.0
    weights[~has_prefix, 0] = 1.0  # no prefix (or special gold): one-hot
    return _table(ids, weights)


def prefix_indicator_table(pieces: list[bytes], specials: set[int]) -> TargetTable:
    """Per gold id the indicator of its strict prefixes ``P(s)``: weight 1 on each id of ``P(s)``,
    0 on the gold column and the padding, so that ``Σ_k weights[y,k]·p[ids[y,k]] = p(P(s))`` and
    ``p(R(s)) = p(P(s)) + p[y]`` (special gold ids have ``P(s) = ∅``). Defined by the vocabulary
    alone: the same table for every objective."""
    ids, member = _prefix_columns(pieces, specials)
    return _table(ids, member.astype(np.float64))


def _prefix_columns(pieces: list[bytes], specials: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` [Vt, 1 + max |P(s)|]: column 0 the gold id, then its strict prefixes, padding repeats
    the gold id; ``member`` marks the prefix columns (False on column 0 and the padding)."""
    vt = len(pieces)
    gold = np.arange(vt, dtype=np.int64)
    prefixes = strict_prefix_ids(pieces, specials)
    width = 1 + max(len(p) for p in prefixes)
    counts = np.fromiter(map(len, prefixes), dtype=np.int64, count=vt)
    rows = np.repeat(gold, counts)
    cols = 1 + np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    ids = np.repeat(gold[:, None], width, axis=1)  # padding repeats the gold id ...
    ids[rows, cols] = np.fromiter(itertools.chain.from_iterable(prefixes), dtype=np.int64, count=rows.size)
    member = np.zeros((vt, width), dtype=bool)  # ... and is masked out here
    member[rows, cols] = True
    return ids, member


def _masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the True entries of ``mask`` (rows with none give zeros)."""
    scores = np.where(mask, scores, -np.inf)
    top = scores.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(mask, np.exp(scores - top), 0.0)
    total = e.sum(axis=1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def _table(ids: np.ndarray, weights: np.ndarray, uniform_mass: float = 0.0, uniform_count: int = 0) -> TargetTable:
    return TargetTable(
        ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
        weights=torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)),
        uniform_mass=uniform_mass,
        uniform_count=uniform_count,
    )
