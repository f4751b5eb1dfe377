"""The comparison report: run folders -> families -> paired comparisons against the baseline.

* A **run** is a folder with per-item lm-eval records (``<run>/lm_eval/ba<batch>.jsonl.gz``) and
  usually a ``metrics.csv``. Its identity is the records header's ``run`` block (all of its
  records must agree): name, seed, model config, objective (and augmentation: StochasTok).
* A **family** is the set of runs with the same model architecture (``run.model``, never the
  folder name): brief 001's ~100M and brief 000's ~500M runs are never mixed. A **variant** is a
  run name without its ``_seed<k>`` suffix; its runs must share one objective, one run per seed.
  Replica k of two variants is the pair of runs with the same seed.
* A family is compared at the last evaluation (tokens) that all its runs have records for, or at
  ``at_tokens``. All records there must have equal ``settings`` (tasks, versions, items, limit,
  few-shot, tokenizer, autocast), else the report is refused naming the difference.
* Per task metric and variant: mean ± sd over the variant's seeds (of per-seed item means), the
  paired difference to the baseline over the seeds both have and the items (``stats.compare``:
  two-level bootstrap CI, exact McNemar with one seed and 0/1 values, else sign-flip). Groups
  (``charbench_single``, ...) pool their tasks' items (lm-eval's size-weighted mean). Validation
  metrics (``metrics.csv`` ``phase=eval`` at the same tokens) have one value per run, not per item:
  the seeds are the paired units (exact sign-flip p over the per-seed differences, Student-t 95%
  interval, since a bootstrap over 2-3 values is never wider than their range; n/a with one seed).
  They include the prefix masses P(s) and R(s) (the same definition for every run) and each run's
  own training objective (``ObjectiveLoss``: mean ± sd only, never compared, since it differs by run).
* p-values are adjusted over every comparison of a family's table (Holm by default, or BH). A
  row is marked when its adjusted p < ``alpha`` and its 95% CI excludes 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from prefix_composer.analysis.plotting import markdown_table, plt, save_figure
from prefix_composer.analysis.stats import adjust_pvalues, compare, mean_sd_over_seeds, sign_flip_pvalue
from prefix_composer.config import SEED_SUFFIX
from prefix_composer.evaluation.records import (
    RECORDS_SUBDIR,
    read_header,
    read_records,
    records_by_batch,
    settings_differences,
)

# The metric reported per task (the usual headline metric); any other task: acc if recorded, else all.
REPORTED_METRICS = {
    'hellaswag': ('acc_norm',), 'piqa': ('acc_norm',), 'winogrande': ('acc',), 'winogrande_debiased': ('acc',),
    'arc_easy': ('acc', 'acc_norm'),
}
ACCURACY_METRICS = ('acc', 'acc_norm', 'acc_bytes')
VAL_PREFIX = 'metrics/eval/'
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


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder: its identity (from its records) and its records and validation rows by tokens."""

    folder: str
    name: str
    variant: str
    seed: int
    objective: Optional[dict[str, Any]]
    model: dict[str, Any]
    records: dict[int, str]                # tokens -> records file
    validation: dict[int, dict[str, float]]  # tokens -> {metrics/eval/<Name>: value}
    augmentation: Optional[dict[str, Any]] = None  # run.augmentation: inputs split by StochasTok


@dataclasses.dataclass
class Family:
    """Runs of one model architecture, compared at ``tokens`` against ``baseline``."""

    label: str
    model: dict[str, Any]
    runs: list[Run]
    baseline: str
    tokens: int
    batch: int
    header: dict[str, Any]                 # records header of the baseline's first run at ``tokens``
    notes: list[str]


def is_run_folder(path: str) -> bool:
    return os.path.isdir(os.path.join(path, RECORDS_SUBDIR)) or os.path.isfile(os.path.join(path, 'metrics.csv'))


def expand_run_folders(paths: Sequence[str]) -> list[str]:
    """Each path that is a run folder, or else the run folders directly inside it (a runs root)."""
    folders = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f'No such folder: {path}')
        if is_run_folder(path):
            folders.append(os.path.abspath(path))
            continue
        inside = sorted(os.path.join(path, n) for n in os.listdir(path) if is_run_folder(os.path.join(path, n)))
        if not inside:
            raise FileNotFoundError(f'{path} is neither a run folder (with {RECORDS_SUBDIR}/ or metrics.csv) nor a folder of runs.')
        folders += [os.path.abspath(p) for p in inside]
    return list(dict.fromkeys(folders))


def read_validation(folder: str) -> dict[int, dict[str, float]]:
    """``{tokens: {metrics/eval/<Name>: value}}`` from the run's ``metrics.csv`` ``phase=eval`` rows."""
    path = os.path.join(folder, 'metrics.csv')
    if not os.path.isfile(path):
        return {}
    frame = pd.read_csv(path)
    columns = [c for c in frame.columns if c.startswith(VAL_PREFIX)]
    rows = frame[frame['phase'] == 'eval'] if 'phase' in frame.columns else frame.iloc[0:0]
    return {int(r['tokens']): {c: float(r[c]) for c in columns if pd.notna(r[c])} for _, r in rows.iterrows()}


def load_run(folder: str) -> Run:
    """The run in ``folder``; ``ValueError`` if it has no records or its records disagree about the run."""
    files = records_by_batch(os.path.join(folder, RECORDS_SUBDIR))
    if not files:
        raise ValueError(f'{folder} has no per-item lm-eval records ({RECORDS_SUBDIR}/ba<batch>.jsonl.gz): it was trained '
                         'without callbacks.lm_eval. Score its checkpoints with scripts/eval_checkpoint.py first.')
    headers = {path: read_header(path) for path in files.values()}
    first_path, first = next(iter(headers.items()))
    for path, header in headers.items():
        if header['run'] != first['run']:
            raise ValueError(f'The records of {folder} disagree about the run: {os.path.basename(first_path)} has '
                             f'{json.dumps(first["run"])}, {os.path.basename(path)} has {json.dumps(header["run"])}.')
    run = first['run']
    return Run(folder=folder, name=run['run_name'], variant=SEED_SUFFIX.sub('', run['run_name']), seed=run['seed'],
               objective=run['objective'], model=run['model'],
               records={h['tokens']: p for p, h in headers.items()}, validation=read_validation(folder),
               augmentation=run.get('augmentation'))


def family_label(model: dict[str, Any]) -> str:
    """``d576-L7-h9kv3-ff1536-V128256``: the architecture in one token (other keys are in the report)."""
    return (f"d{model.get('hidden_size')}-L{model.get('num_hidden_layers')}-h{model.get('num_attention_heads')}"
            f"kv{model.get('num_key_value_heads')}-ff{model.get('intermediate_size')}-V{model.get('vocab_size')}")


def model_differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ', '.join(f'{k} {a.get(k)} vs {b.get(k)}' for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def group_families(runs: Iterable[Run]) -> list[list[Run]]:
    """Runs grouped by identical ``model`` (first-seen order)."""
    families: dict[str, list[Run]] = {}
    for run in runs:
        families.setdefault(json.dumps(run.model, sort_keys=True), []).append(run)
    return list(families.values())


def check_variants(runs: list[Run]) -> dict[str, dict[int, Run]]:
    """``{variant: {seed: run}}``; ``ValueError`` for two runs of one variant and seed, or one variant
    with two objectives."""
    variants: dict[str, dict[int, Run]] = {}
    for run in runs:
        seeds = variants.setdefault(run.variant, {})
        if run.seed in seeds:
            raise ValueError(f'{seeds[run.seed].folder} and {run.folder} are both variant {run.variant!r} with seed '
                             f'{run.seed}; pass only one of them.')
        other = next(iter(seeds.values()), None)
        if other is not None and (other.objective, other.augmentation) != (run.objective, run.augmentation):
            raise ValueError(f'{other.folder} and {run.folder} are both variant {run.variant!r} but train different '
                             f'objectives ({objective_label(other.objective, other.augmentation)} vs '
                             f'{objective_label(run.objective, run.augmentation)}).')
        seeds[run.seed] = run
    return dict(sorted(variants.items()))


def choose_baseline(variants: dict[str, dict[int, Run]], baseline: str) -> Optional[str]:
    """The variant named ``baseline``, else the one variant whose objective is ``baseline`` on unaugmented
    inputs (``ce`` is ``b000_ce`` in brief 000's family, never ``stochastok_ce``); None if there is none;
    ``ValueError`` if ambiguous."""
    if baseline in variants:
        return baseline
    firsts = {v: next(iter(seeds.values())) for v, seeds in variants.items()}
    matches = [v for v, run in firsts.items()
               if (run.objective or {'objective': 'ce'})['objective'] == baseline and run.augmentation is None]
    if len(matches) > 1:
        raise ValueError(f'--baseline {baseline!r} matches the objective of several variants {matches}; name one of them.')
    return matches[0] if matches else None


def comparison_tokens(runs: list[Run], at_tokens: Optional[int]) -> int:
    """``at_tokens`` (every run must have records there), else the largest token count all runs reached."""
    if at_tokens is not None:
        missing = [f'{r.name} ({sorted(r.records)})' for r in runs if at_tokens not in r.records]
        if missing:
            raise ValueError(f'--at-tokens {at_tokens}: no records there for {", ".join(missing)} '
                             '(their evaluations are at the tokens listed).')
        return at_tokens
    common = set.intersection(*(set(r.records) for r in runs))
    if not common:
        raise ValueError('No evaluation that every run has reached: '
                         + '; '.join(f'{r.name} at tokens {sorted(r.records)}' for r in runs)
                         + '. Pass --at-tokens, or only runs evaluated at common points.')
    return max(common)


def check_settings(runs: list[Run], tokens: int) -> dict[str, dict[str, Any]]:
    """``{run name: records header at tokens}``; ``ValueError`` naming the difference when two runs'
    evaluation settings differ (they must not be compared)."""
    headers = {r.name: read_header(r.records[tokens]) for r in runs}
    (first_name, first), *rest = headers.items()
    for name, header in rest:
        differences = settings_differences(first['settings'], header['settings'])
        if differences:
            raise ValueError(f'Runs {first_name!r} and {name!r} were evaluated differently at {tokens:,} tokens '
                             f'({"; ".join(differences)}), so their items cannot be compared. Re-score one of them '
                             'with scripts/eval_checkpoint.py using the other\'s settings.')
    return headers


def build_families(runs: list[Run], baseline: str, at_tokens: Optional[int]) -> list[Family]:
    """Group, check and place every family; ``ValueError`` when a family has no baseline (runs of
    different families are never compared with each other)."""
    groups = group_families(runs)
    families = []
    for group in groups:
        variants = check_variants(group)
        label = family_label(group[0].model)
        chosen = choose_baseline(variants, baseline)
        if chosen is None:
            elsewhere = [g for g in groups if g is not group and choose_baseline(check_variants(g), baseline)]
            hint = (f' The {baseline!r} runs are in family {family_label(elsewhere[0][0].model)} '
                    f'({model_differences(group[0].model, elsewhere[0][0].model)}): runs of different model configs are '
                    'never compared.' if elsewhere else '')
            raise ValueError(f'Family {label} (runs {", ".join(r.name for r in group)}) has no baseline {baseline!r}.{hint} '
                             'Add its baseline runs, pass --baseline with one of its variants, or leave its folders out.')
        tokens = comparison_tokens(group, at_tokens)
        headers = check_settings(group, tokens)
        notes = []
        base_seeds = set(variants[chosen])
        for variant, seeds in variants.items():
            unpaired = sorted(set(seeds) - base_seeds)
            if unpaired:
                notes.append(f'{variant}: seeds {unpaired} have no {chosen} replica and are left out of its comparison.')
        base_header = headers[variants[chosen][min(variants[chosen])].name]
        families.append(Family(label=label, model=group[0].model, runs=group, baseline=chosen, tokens=tokens,
                               batch=base_header['batch'], header=base_header, notes=notes))
    return families


# -- per-item values ------------------------------------------------------------------------------

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


def objective_label(objective: Optional[dict[str, Any]], augmentation: Optional[dict[str, Any]] = None) -> str:
    label = 'ce (no PrefixSmoothing)' if objective is None else ' '.join(f'{k}={v}' for k, v in objective.items())
    return label + ''.join(f' + {name} ' + ' '.join(f'{k}={v}' for k, v in block.items())
                           for name, block in (augmentation or {}).items())


def run_objective_label(run: Run) -> str:
    return objective_label(run.objective, run.augmentation)


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
            row = Row(**common, n_items=x.shape[1], variant=variant, objective=run_objective_label(seeds[paired[0]]),
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
            row = Row(**common, variant=variant, objective=run_objective_label(seeds[paired[0]]),
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


# -- output ---------------------------------------------------------------------------------------

def fmt(value: float, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return 'n/a'
    return f'{value:+.4f}' if signed else f'{value:.4f}'


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return 'n/a'
    return f'{p:.2g}' if p < 0.001 else f'{p:.3f}'


def table_cells(row: Row, baseline: str) -> list[str]:
    is_base = row.variant == baseline
    spread = f'{fmt(row.mean)} ± {fmt(row.sd)}' if np.isfinite(row.sd) else fmt(row.mean)
    if is_base:
        diff = '(baseline)'
    elif np.isfinite(row.ci_low):
        diff = f'{fmt(row.diff, True)} [{fmt(row.ci_low, True)}, {fmt(row.ci_high, True)}]'
    else:
        diff = f'{fmt(row.diff, True)} [n/a]'
    return [row.task, row.metric, fmt(row.chance), str(row.n_items) if row.n_items else '-', row.variant,
            str(row.n_seeds), spread, diff, '' if is_base else fmt_p(row.p), '' if is_base else fmt_p(row.p_adj),
            f'**{row.marked}**' if row.marked else '']


TABLE_HEADERS = ['task', 'metric', 'chance', 'items', 'variant', 'seeds', 'mean ± sd', 'Δ vs {baseline} [95% CI]',
                 'p', 'p adj', 'marked']


def family_table(family: Family, rows: list[Row]) -> str:
    headers = [h.format(baseline=family.baseline) for h in TABLE_HEADERS]
    return markdown_table(headers, [table_cells(r, family.baseline) for r in rows])


METHOD_NAMES = {'holm': 'Holm (family-wise error)', 'bh': 'Benjamini-Hochberg (false discovery rate)'}


def family_section(family: Family, rows: list[Row], method: str, alpha: float) -> str:
    settings = family.header['settings']
    tested = sum(np.isfinite(r.p) for r in rows)
    runs = sorted(family.runs, key=lambda r: (r.variant, r.seed))
    run_lines = [f'| {r.variant} | {r.seed} | {r.name} | {run_objective_label(r)} | '
                 f'{", ".join(f"{t:,}" for t in sorted(r.records))} | {r.folder} |' for r in runs]
    lines = [
        f'## Family {family.label}',
        '',
        f'Model: {json.dumps(family.model, sort_keys=True)}',
        '',
        f'Compared at **{family.tokens:,} tokens** (batch {family.batch}), the last evaluation that every run of the '
        f'family has reached (or `--at-tokens`). Baseline: **{family.baseline}**, paired by seed replica and item. '
        f'p-values adjusted by {METHOD_NAMES[method]} over the {tested} comparisons of this table; **marked**: adjusted '
        f'p < {alpha} and the 95% CI excludes 0 (better/worse by the metric\'s direction).',
        '',
        f'Evaluation settings (equal for every run): tasks {settings["tasks"]}, limit {settings["limit"]}, '
        f'num_fewshot {settings["num_fewshot"]}, few-shot seed {settings["fewshot_random_seed"]}, autocast '
        f'{settings["autocast"]}, tokenizer sha256 {settings["tokenizer_hash"][:12]}…',
        '',
        '| variant | seed | run | objective | records at tokens | folder |',
        '|---|---|---|---|---|---|',
        *run_lines,
        '',
        family_table(family, rows),
    ]
    if family.notes:
        lines += ['', 'Notes:', *[f'- {n}' for n in family.notes]]
    return '\n'.join(lines) + '\n'


def rows_frame(rows_by_family: dict[str, list[Row]]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(r) for rows in rows_by_family.values() for r in rows])


def forest_plot(family: Family, rows: list[Row], path: str) -> Optional[str]:
    """One panel per task metric: each variant's difference to the baseline with its 95% CI."""
    compared = [r for r in rows if r.variant != family.baseline]
    labels = list(dict.fromkeys(r.label for r in compared))
    if not labels:
        return None
    variants = sorted({r.variant for r in compared})
    ncols = min(5, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 0.45 * len(variants) * nrows + 1.2 * nrows),
                             squeeze=False)
    colors = {'better': 'tab:green', 'worse': 'tab:red', 'differs': 'tab:purple', '': 'black'}
    for ax, label in zip(axes.flat, labels):
        for r in (r for r in compared if r.label == label):
            y = variants.index(r.variant)
            has_ci = np.isfinite(r.ci_low)
            xerr = [[r.diff - r.ci_low], [r.ci_high - r.diff]] if has_ci else None
            ax.errorbar(r.diff, y, xerr=xerr, fmt='o' if has_ci else 'x', color=colors[r.marked], capsize=3, markersize=4)
        ax.axvline(0, color='gray', linewidth=0.8, linestyle='--')
        ax.set_yticks(range(len(variants)), variants, fontsize=7)
        ax.set_ylim(-0.6, len(variants) - 0.4)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=8)
        ax.tick_params(axis='x', labelsize=7)
        ax.grid(axis='x', alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis('off')
    fig.suptitle(f'{family.label}: difference to {family.baseline} at {family.tokens:,} tokens (95% CI; green/red: '
                 'marked after adjustment)', fontsize=9)
    return save_figure(fig, path)


@dataclasses.dataclass(frozen=True)
class Report:
    families: list[Family]
    rows: dict[str, list[Row]]
    markdown: str
    paths: dict[str, str]


def write_report(paths: Sequence[str], out_dir: Optional[str] = None, baseline: str = 'ce',
                 at_tokens: Optional[int] = None, method: str = 'holm', alpha: float = 0.05,
                 n_boot: int = 10_000, n_perm: int = 10_000) -> Report:
    """Load, group, compare; write ``results.md``, ``results.csv`` and ``forest_<family>.png`` to
    ``out_dir`` (default ``<common parent of the runs>/report``)."""
    if method not in METHOD_NAMES:
        raise ValueError(f'Unknown adjustment {method!r}; expected one of {sorted(METHOD_NAMES)}.')
    folders = expand_run_folders(paths)
    runs = [load_run(f) for f in folders]
    families = build_families(runs, baseline, at_tokens)
    rows = compare_families(families, n_boot=n_boot, n_perm=n_perm, method=method, alpha=alpha)
    root = os.path.commonpath(folders) if len(folders) > 1 else os.path.dirname(folders[0])
    out_dir = out_dir or os.path.join(root, 'report')
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    sections = []
    for family in families:
        png = forest_plot(family, rows[family.label], os.path.join(out_dir, f'forest_{family.label}.png'))
        if png:
            written[f'forest {family.label}'] = png
        sections.append(family_section(family, rows[family.label], method, alpha))
    markdown = f'# Objectives compared: {len(runs)} runs, {len(families)} model families\n\n' + '\n'.join(sections)
    written['markdown'] = os.path.join(out_dir, 'results.md')
    with open(written['markdown'], 'w') as f:
        f.write(markdown)
    written['csv'] = os.path.join(out_dir, 'results.csv')
    rows_frame(rows).to_csv(written['csv'], index=False)
    return Report(families=families, rows=rows, markdown=markdown, paths=written)
