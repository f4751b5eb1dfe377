"""The comparison rows of a family: per task metric and variant, mean ± sd over the variant's
seeds (of per-seed item means) and the paired difference to the baseline over the seeds both have
and the items (``stats.compare``). Groups (``charbench_single``, ...) pool their tasks' items
(lm-eval's size-weighted mean). Validation metrics (``metrics.csv`` ``phase=eval`` at the same
tokens) have one value per run, not per item: the seeds are the paired units (exact sign-flip p
over the per-seed differences, Student-t 95% interval, n/a with one seed). They include the prefix
masses P(s) and R(s) (the same definition for every run) and each run's own training objective
(``ObjectiveLoss``: mean ± sd only, never compared, since it differs by run). p-values are
adjusted over every comparison of a family's table (Holm by default, or BH). A row is marked when
its adjusted p < ``alpha`` and its 95% CI excludes 0.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Optional

import numpy as np
import scipy.stats

from prefix_composer.analysis.families import Family, check_variants
from prefix_composer.analysis.runs import Run, VAL_PREFIX
from prefix_composer.analysis.stats import adjust_pvalues, compare, mean_sd_over_seeds, sign_flip_pvalue
from prefix_composer.evaluation.records import read_records

# The metric reported per task (the usual headline metric); any other task: acc if recorded, else all.
REPORTED_METRICS = {
    'hellaswag': ('acc_norm',), 'piqa': ('acc_norm',), 'winogrande': ('acc',), 'winogrande_debiased': ('acc',),
    'arc_easy': ('acc', 'acc_norm'),
}
ACCURACY_METRICS = ('acc', 'acc_norm', 'acc_bytes')
# Validation metrics of prefix_llama: direction and chance level (uniform prediction over V ids).
VAL_METRICS = {
    'LanguageCrossEntropy': ('NLL', False, lambda v: math.log(v)),
    'LanguagePerplexity': ('perplexity', False, float),
    'TokenAccuracy': ('token accuracy', True, lambda v: 1 / v),
    'PrefixMassStrict': ('prefix mass P(s)', None, None),      # defined by the vocabulary: comparable
    'PrefixMassInclusive': ('prefix mass R(s)', None, None),
    'ObjectiveLoss': ('own objective', False, None),           # each run's own objective: shown, not compared
}
NOT_COMPARED = {'ObjectiveLoss'}


def leaf_tasks(name: str, groups: dict[str, list[str]]) -> list[str]:
    return [leaf for child in groups[name] for leaf in leaf_tasks(child, groups)] if name in groups else [name]


def metric_rows(header: dict[str, Any]) -> list[tuple[str, str]]:
    """(task or group, metric) rows in report order: each requested task, or a group's tasks
    followed by the group itself (sub-groups first)."""
    groups, items = header['groups'], header['settings']['items']
    rows: list[tuple[str, str]] = []

    def visit(name: str) -> None:
        if name in groups:
            for child in groups[name]:
                visit(child)
        metrics = REPORTED_METRICS.get(name) or (('acc',) if 'acc' in available(name) else tuple(sorted(available(name))))
        rows.extend((name, m) for m in metrics if m in available(name))

    def available(name: str) -> set[str]:
        return set.intersection(*(set(header['higher_is_better'].get(t, {})) for t in leaf_tasks(name, groups)))

    for name in header['settings']['tasks']:
        if name in groups or name in items:
            visit(name)
        else:  # a tag: its tasks
            for task in sorted(t for t in items if t not in groups):
                visit(task)
    return list(dict.fromkeys(rows))


class ItemTable:
    """Per-item values of every run at one evaluation, aligned by (task, doc_id)."""

    def __init__(self, runs: list[Run], tokens: int):
        self.items = {r.name: {(i['task'], i['doc_id']): i for i in read_records(r.records[tokens]).items} for r in runs}

    def values(self, run: Run, tasks: list[str], metric: str) -> np.ndarray:
        items = self.items[run.name]
        keys = sorted(k for k in items if k[0] in tasks)
        return np.array([items[k]['metrics'][metric] for k in keys], dtype=float)

    def chance(self, run: Run, tasks: list[str], metric: str) -> float:
        """Mean over items of 1/(number of choices) for accuracy metrics; NaN otherwise."""
        items = [i for k, i in sorted(self.items[run.name].items()) if k[0] in tasks]
        if metric not in ACCURACY_METRICS or not all(isinstance(i['gold'], int) and i['loglikelihoods'] for i in items):
            return float('nan')
        return float(np.mean([1 / len(i['loglikelihoods']) for i in items]))


# -- the table ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    """One (metric, variant) line of the report."""

    family: str
    task: str
    metric: str
    label: str
    chance: float
    n_items: int
    variant: str
    objective: str
    n_seeds: int
    mean: float
    sd: float
    diff: float = float('nan')
    ci_low: float = float('nan')
    ci_high: float = float('nan')
    p: float = float('nan')
    test: str = ''
    p_adj: float = float('nan')
    higher_is_better: Optional[bool] = None
    marked: str = ''


def objective_label(objective: Optional[dict[str, Any]]) -> str:
    if objective is None:
        return 'ce (no PrefixSmoothing)'
    return ' '.join(f'{k}={v}' for k, v in objective.items())


def rng_seed(*parts: str) -> int:
    """A fixed bootstrap/permutation seed per comparison (reproducible, different between rows)."""
    return zlib.crc32('|'.join(parts).encode())


def family_rows(family: Family, n_boot: int, n_perm: int) -> list[Row]:
    """Every comparison row of one family (p not yet adjusted)."""
    variants = check_variants(family.runs)
    base = variants[family.baseline]
    table = ItemTable(family.runs, family.tokens)
    groups = family.header['groups']
    rows: list[Row] = []
    for task, metric in metric_rows(family.header):
        tasks = leaf_tasks(task, groups)
        higher = family.header['higher_is_better'].get(task, {}).get(metric)
        reference = next(iter(base.values()))
        common = dict(family=family.label, task=task, metric=metric, label=f'{task} {metric}',
                      chance=table.chance(reference, tasks, metric), higher_is_better=higher)
        for variant, seeds in variants.items():
            paired = sorted(set(seeds) & set(base)) if variant != family.baseline else sorted(seeds)
            if not paired:
                continue  # no replica in common with the baseline (stated in the notes)
            x = np.stack([table.values(seeds[s], tasks, metric) for s in paired])
            mean, sd = mean_sd_over_seeds(x)
            row = Row(**common, n_items=x.shape[1], variant=variant, objective=objective_label(seeds[paired[0]].objective),
                      n_seeds=len(paired), mean=mean, sd=sd)
            if variant != family.baseline:
                y = np.stack([table.values(base[s], tasks, metric) for s in paired])
                c = compare(x, y, n_boot=n_boot, n_perm=n_perm, rng=rng_seed(family.label, task, metric, variant))
                row.diff, row.ci_low, row.ci_high, row.p, row.test = c.diff, c.ci_low, c.ci_high, c.p, c.test
            rows.append(row)
    rows += validation_rows(family, variants, n_perm)
    return rows


def validation_rows(family: Family, variants: dict[str, dict[int, Run]], n_perm: int) -> list[Row]:
    """Rows of the ``metrics.csv`` validation metrics at the family's tokens: one value per run,
    seeds as the paired units (CI and p only with >= 2 paired seeds)."""
    base = variants[family.baseline]
    columns = sorted({c for r in family.runs for c in r.validation.get(family.tokens, {})})
    vocab = family.model.get('vocab_size')
    rows = []
    for column in columns:
        name = column[len(VAL_PREFIX):]
        metric, higher, chance = VAL_METRICS.get(name, (name, None, None))
        label = f'validation {metric}'
        missing = [r.name for r in family.runs if column not in r.validation.get(family.tokens, {})]
        if missing:
            family.notes.append(f'{label}: no {column} at {family.tokens:,} tokens in {missing}; row left out.')
            continue
        common = dict(family=family.label, task='validation', metric=metric, label=label,
                      chance=chance(vocab) if chance and vocab else float('nan'), n_items=0, higher_is_better=higher)
        for variant, seeds in variants.items():
            paired = sorted(set(seeds) & set(base)) if variant != family.baseline else sorted(seeds)
            if not paired:
                continue
            x = np.array([seeds[s].validation[family.tokens][column] for s in paired])
            mean, sd = mean_sd_over_seeds(x[:, None])  # one value per seed
            row = Row(**common, variant=variant, objective=objective_label(seeds[paired[0]].objective),
                      n_seeds=len(paired), mean=mean, sd=sd)
            if variant != family.baseline and name not in NOT_COMPARED:
                y = np.array([base[s].validation[family.tokens][column] for s in paired])
                row.diff = float(np.mean(x - y))
                if len(paired) >= 2:  # seeds as the paired units: exact sign-flip p, Student-t interval
                    row.p = sign_flip_pvalue(x - y, n_perm=n_perm, rng=rng_seed(family.label, column, variant))
                    row.test = 'sign_flip over seeds'
                    interval = scipy.stats.ttest_rel(x, y).confidence_interval(0.95)
                    row.ci_low, row.ci_high = float(interval.low), float(interval.high)
            rows.append(row)
    return rows


def adjust_and_mark(rows: list[Row], method: str, alpha: float) -> None:
    """Adjust the p-values of ``rows`` together (``stats.adjust_pvalues``) and mark each row whose
    adjusted p < ``alpha`` and whose CI excludes 0: ``better``/``worse`` by the metric's direction."""
    adjusted = adjust_pvalues([r.p for r in rows], method=method)
    for row, p_adj in zip(rows, adjusted):
        row.p_adj = float(p_adj)
        if p_adj < alpha and (row.ci_low > 0 or row.ci_high < 0):
            if row.higher_is_better is None:
                row.marked = 'differs'
            else:
                row.marked = 'better' if (row.diff > 0) == row.higher_is_better else 'worse'


def compare_families(families: list[Family], n_boot: int = 10_000, n_perm: int = 10_000,
                     method: str = 'holm', alpha: float = 0.05) -> dict[str, list[Row]]:
    """``{family label: rows}`` with p-values adjusted over each family's table."""
    out = {}
    for family in families:
        rows = family_rows(family, n_boot, n_perm)
        adjust_and_mark(rows, method, alpha)
        out[family.label] = rows
    return out


