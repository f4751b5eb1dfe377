"""The report's text and pictures: Markdown tables and sections, the CSV frame, forest plots."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional

import numpy as np
import pandas as pd

from prefix_composer.analysis.families import Family
from prefix_composer.analysis.plotting import markdown_table, plt, save_figure
from prefix_composer.analysis.rows import Row, objective_label


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
    run_lines = [f'| {r.variant} | {r.seed} | {r.name} | {objective_label(r.objective)} | '
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


