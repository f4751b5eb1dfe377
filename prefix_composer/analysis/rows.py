"""The comparison rows of a family, one per (task metric, variant), in three sections:

* **headline**: the comparisons the report is judged on, adjusted together (Holm by default):
  per lm-eval task its first reported metric, where a task is a group of leaf tasks (CharBench
  ``charbench_single``, ``charbench_multi``) or a task in no group (``hellaswag``); validation
  ``val nll``; each probe's ``acc``; recovery ``logp_marginal`` and ``recovered_fraction``
  (``HEADLINE_METRICS``);
* **exploratory**: every other per-item comparison (leaf CharBench tasks, a task's other metrics,
  per-class validation NLL), adjusted among themselves by Benjamini-Hochberg;
* **run-level**: ``metrics.csv`` validation metrics, one value per run: mean ± sd over seeds and
  the mean per-seed difference with a Student-t 95% interval (n/a with one seed), description
  only, never tested (2-3 seeds give no test any power) and outside both adjustments.

Per-item rows: mean ± sd over the variant's seeds (of per-seed item means) and the paired
difference to the baseline over the seeds both have and the items (``stats.compare``), items
aligned by (task, doc_id) and checked to be the same in every run. Groups pool their tasks' items
(lm-eval's size-weighted mean). A null metric value (an item without that measurement, the same
in every run) drops the item from that row. Each tested row gets the minimum detectable effect at
80% power at its section's level ``alpha / m`` (Holm's and BH's strictest step over its ``m``
tests), from its observed second moment (``stats.minimum_detectable_effect``). A row is marked
when its adjusted p < ``alpha`` and its 95% CI excludes 0.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Optional

import numpy as np
import scipy.stats

from prefix_composer.analysis.families import Family, check_variants
from prefix_composer.analysis.runs import VAL_PREFIX, Run
from prefix_composer.analysis.stats import adjust_pvalues, compare, mean_sd_over_seeds, minimum_detectable_effect
from prefix_composer.evaluation.records import RECORDS_SUBDIR, read_records

# The metric reported per lm-eval task (the first is its headline); any other task: acc if recorded, else all.
REPORTED_METRICS = {
    'hellaswag': ('acc_norm',), 'piqa': ('acc_norm',), 'winogrande': ('acc',), 'winogrande_debiased': ('acc',),
    'arc_easy': ('acc', 'acc_norm'),
}
ACCURACY_METRICS = ('acc', 'acc_norm', 'acc_bytes')
# Headline metrics of the other record kinds (every task of the kind); their other metrics are exploratory.
HEADLINE_METRICS = {'validation': ('nll',), 'probes': ('acc',), 'recovery': ('logp_marginal', 'recovered_fraction')}
SECTIONS = ('headline', 'exploratory', 'run-level')
# Validation metrics of prefix_llama in metrics.csv: direction and chance level (uniform prediction over V ids).
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


def metric_rows(header: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """lm-eval (task or group, metric, headline) rows in report order: each requested task, or a
    group's tasks followed by the group itself (sub-groups first). Headline: the first metric of
    a group of leaf tasks or of a task in no group."""
    groups, items = header['groups'], header['settings']['items']
    grouped = {child for children in groups.values() for child in children}
    rows: list[tuple[str, str, bool]] = []

    def available(name: str) -> set[str]:
        return set.intersection(*(set(header['higher_is_better'].get(t, {})) for t in leaf_tasks(name, groups)))

    def visit(name: str) -> None:
        if name in groups:
            for child in groups[name]:
                visit(child)
        metrics = REPORTED_METRICS.get(name) or (('acc',) if 'acc' in available(name) else tuple(sorted(available(name))))
        metrics = [m for m in metrics if m in available(name)]
        headline = (all(child not in groups for child in groups[name]) if name in groups else name not in grouped)
        rows.extend((name, m, headline and k == 0) for k, m in enumerate(metrics))

    for name in header['settings']['tasks']:
        if name in groups or name in items:
            visit(name)
        else:  # a tag: its tasks
            for task in sorted(t for t in items if t not in groups):
                visit(task)
    return list(dict.fromkeys(rows))


def kind_rows(kind: str, header: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(task, metric, headline) rows of a measurement kind: every metric of every task, in the
    order of ``settings.tasks``, the headline metrics first."""
    headline = HEADLINE_METRICS.get(kind, ())
    return [(task, metric, metric in headline) for task in header['settings']['tasks']
            for metric in sorted(header['higher_is_better'].get(task, {}), key=lambda m: (m not in headline, m))]


class ItemTable:
    """Per-item values of every run for one record kind at one evaluation, aligned by (task,
    doc_id); ``ValueError`` naming the run and the task when a run's items are not the
    reference run's (the first)."""

    def __init__(self, kind: str, runs: list[Run], tokens: int):
        self.kind, self.tokens = kind, tokens
        self.items = {r.name: {(i['task'], i['doc_id']): i for i in read_records(r.records[kind][tokens]).items}
                      for r in runs}
        reference = runs[0].name
        tasks = sorted({task for items in self.items.values() for task, _ in items})
        for run in runs[1:]:
            for task in tasks:
                ref = {d for t, d in self.items[reference] if t == task}
                own = {d for t, d in self.items[run.name] if t == task}
                if own != ref:
                    raise ValueError(
                        f'Run {run.name!r} ({run.folder}) has other {kind} items than run {reference!r} for task {task!r} '
                        f'at {tokens:,} tokens: doc_id {sorted(ref - own)[:5]} missing, {sorted(own - ref)[:5]} extra '
                        f'({len(own)} vs {len(ref)} items). Items are paired by (task, doc_id), so the runs cannot be '
                        'compared: re-score them with the same evaluation data (scripts/eval_checkpoint.py).')

    def keys(self, run: Run, tasks: list[str]) -> list[tuple[str, int]]:
        return sorted(k for k in self.items[run.name] if k[0] in tasks)

    def values(self, run: Run, tasks: list[str], metric: str) -> np.ndarray:
        """The run's values in (task, doc_id) order, NaN where the item's value is null."""
        items = self.items[run.name]
        return np.array([items[k]['metrics'].get(metric) for k in self.keys(run, tasks)], dtype=float)

    def present(self, runs: list[Run], tasks: list[str], metric: str) -> np.ndarray:
        """Mask of the items that have a value; ``ValueError`` naming a run whose nulls differ from
        the first run's (which items lack a value depends on the data only, never on the run)."""
        mask = ~np.isnan(self.values(runs[0], tasks, metric))
        for run in runs[1:]:
            differs = np.flatnonzero(~np.isnan(self.values(run, tasks, metric)) != mask)
            if differs.size:
                task, doc_id = self.keys(run, tasks)[differs[0]]
                raise ValueError(f'Run {run.name!r} has {"a value" if not mask[differs[0]] else "null"} for {self.kind} '
                                 f'{task} {metric} doc_id {doc_id} where run {runs[0].name!r} has '
                                 f'{"null" if not mask[differs[0]] else "a value"} ({differs.size} such items); the same '
                                 'evaluation data must give nulls on the same items.')
        return mask

    def chance(self, run: Run, tasks: list[str], metric: str) -> float:
        """Mean over items of 1/(number of choices) for lm-eval accuracy metrics; NaN otherwise."""
        items = [i for k, i in sorted(self.items[run.name].items()) if k[0] in tasks]
        if metric not in ACCURACY_METRICS or not all(isinstance(i.get('gold'), int) and i.get('loglikelihoods')
                                                     for i in items):
            return float('nan')
        return float(np.mean([1 / len(i['loglikelihoods']) for i in items]))


@dataclasses.dataclass
class Row:
    """One (metric, variant) line of the report."""

    family: str
    kind: str
    section: str
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
    untrained: float = float('nan')     # probes: the same probe on the step-0 embedding
    diff: float = float('nan')
    ci_low: float = float('nan')
    ci_high: float = float('nan')
    p: float = float('nan')
    test: str = ''
    p_adj: float = float('nan')
    second_moment: float = float('nan')
    mde: float = float('nan')
    higher_is_better: Optional[bool] = None
    marked: str = ''


def objective_label(run: Run) -> str:
    """The run's objective block as ``key=value`` words, then each input augmentation (``+ stochastok expand_prop=0.1``)."""
    label = 'ce (no PrefixSmoothing)' if run.objective is None else ' '.join(f'{k}={v}' for k, v in run.objective.items())
    return label + ''.join(f' + {name} ' + ' '.join(f'{k}={v}' for k, v in block.items())
                           for name, block in (run.augmentation or {}).items())


def rng_seed(*parts: str) -> int:
    """A fixed bootstrap/permutation seed per comparison (reproducible, different between rows)."""
    return zlib.crc32('|'.join(parts).encode())


def paired_seeds(variant: str, seeds: dict[int, Run], base: dict[int, Run], baseline: str) -> list[int]:
    return sorted(set(seeds) & set(base)) if variant != baseline else sorted(seeds)


def item_rows(family: Family, kind: str, n_boot: int, n_perm: int) -> list[Row]:
    """The per-item comparison rows of one record kind (p not yet adjusted)."""
    variants = check_variants(family.runs)
    base = variants[family.baseline]
    reference = base[min(base)]
    runs = [reference] + [r for r in family.runs if r is not reference]
    table = ItemTable(kind, runs, family.tokens)
    header = family.kinds[kind][reference.name]
    groups = header['groups']
    baselines = header.get('baselines', {})
    rows: list[Row] = []
    for task, metric, headline in (metric_rows(header) if kind == RECORDS_SUBDIR else kind_rows(kind, header)):
        tasks = leaf_tasks(task, groups)
        present = table.present(runs, tasks, metric)
        reference_values = baselines.get(task, {}).get(metric, {})
        chance = table.chance(reference, tasks, metric) if kind == RECORDS_SUBDIR else reference_values.get('majority')
        common = dict(family=family.label, kind=kind, section='headline' if headline else 'exploratory', task=task,
                      metric=metric, label=f'{task} {metric}', chance=float('nan') if chance is None else chance,
                      untrained=float('nan') if reference_values.get('untrained') is None else reference_values['untrained'],
                      higher_is_better=header['higher_is_better'].get(task, {}).get(metric))
        for variant, seeds in variants.items():
            paired = paired_seeds(variant, seeds, base, family.baseline)
            if not paired:
                continue  # no replica in common with the baseline (stated in the notes)
            x = np.stack([table.values(seeds[s], tasks, metric)[present] for s in paired])
            mean, sd = mean_sd_over_seeds(x)
            row = Row(**common, n_items=x.shape[1], variant=variant, objective=objective_label(seeds[paired[0]]),
                      n_seeds=len(paired), mean=mean, sd=sd)
            if variant != family.baseline:
                y = np.stack([table.values(base[s], tasks, metric)[present] for s in paired])
                c = compare(x, y, n_boot=n_boot, n_perm=n_perm, rng=rng_seed(family.label, kind, task, metric, variant))
                row.diff, row.ci_low, row.ci_high, row.p, row.test = c.diff, c.ci_low, c.ci_high, c.p, c.test
                row.second_moment = c.second_moment
            rows.append(row)
    return rows


def run_level_rows(family: Family, variants: dict[str, dict[int, Run]]) -> list[Row]:
    """Rows of the ``metrics.csv`` validation metrics at the family's tokens: one value per run,
    description only (mean difference over paired seeds, Student-t interval with >= 2 seeds)."""
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
        common = dict(family=family.label, kind='metrics.csv', section='run-level', task='validation', metric=metric,
                      label=label, chance=chance(vocab) if chance and vocab else float('nan'), n_items=0,
                      higher_is_better=higher)
        for variant, seeds in variants.items():
            paired = paired_seeds(variant, seeds, base, family.baseline)
            if not paired:
                continue
            x = np.array([seeds[s].validation[family.tokens][column] for s in paired])
            mean, sd = mean_sd_over_seeds(x[:, None])  # one value per seed
            row = Row(**common, variant=variant, objective=objective_label(seeds[paired[0]]),
                      n_seeds=len(paired), mean=mean, sd=sd)
            if variant != family.baseline and name not in NOT_COMPARED:
                y = np.array([base[s].validation[family.tokens][column] for s in paired])
                row.diff = float(np.mean(x - y))
                if len(paired) >= 2:
                    interval = scipy.stats.ttest_rel(x, y).confidence_interval(0.95)
                    row.ci_low, row.ci_high = float(interval.low), float(interval.high)
            rows.append(row)
    return rows


def family_rows(family: Family, n_boot: int, n_perm: int) -> list[Row]:
    """Every row of one family: per-item rows of each record kind, then the run-level rows."""
    rows = [row for kind in family.kinds for row in item_rows(family, kind, n_boot, n_perm)]
    return rows + run_level_rows(family, check_variants(family.runs))


def adjust_and_mark(rows: list[Row], method: str, alpha: float) -> None:
    """Adjust the p-values of the headline rows together by ``method`` and of the exploratory
    rows by Benjamini-Hochberg; give each tested row its MDE at ``alpha / m`` of its section;
    mark each row whose adjusted p < ``alpha`` and whose CI excludes 0: ``better``/``worse`` by
    the metric's direction."""
    for section, how in (('headline', method), ('exploratory', 'bh')):
        tested = [r for r in rows if r.section == section and np.isfinite(r.p)]
        for row, p_adj in zip(tested, adjust_pvalues([r.p for r in tested], method=how)):
            row.p_adj = float(p_adj)
            row.mde = minimum_detectable_effect(row.second_moment, row.n_items, alpha / len(tested))
            if p_adj < alpha and (row.ci_low > 0 or row.ci_high < 0):
                if row.higher_is_better is None:
                    row.marked = 'differs'
                else:
                    row.marked = 'better' if (row.diff > 0) == row.higher_is_better else 'worse'


def compare_families(families: list[Family], n_boot: int = 10_000, n_perm: int = 10_000,
                     method: str = 'holm', alpha: float = 0.05) -> dict[str, list[Row]]:
    """``{family label: rows}`` with p-values adjusted within each family's sections."""
    out = {}
    for family in families:
        rows = family_rows(family, n_boot, n_perm)
        adjust_and_mark(rows, method, alpha)
        out[family.label] = rows
    return out
