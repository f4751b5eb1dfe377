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
from prefix_composer.analysis.rows import SECTIONS, Row, objective_label
from prefix_composer.analysis.runs import Run


def fmt(value: float, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return 'n/a'
    return f'{value:+.4f}' if signed else f'{value:.4f}'


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return 'n/a'
    return f'{p:.2g}' if p < 0.001 else f'{p:.3f}'


def chance_cell(row: Row) -> str:
    """The chance level, or for probes the majority baseline and the step-0 (untrained) probe."""
    return f'{fmt(row.chance)} (step 0 {fmt(row.untrained)})' if np.isfinite(row.untrained) else fmt(row.chance)


def table_cells(row: Row, baseline: str) -> list[str]:
    is_base = row.variant == baseline
    spread = f'{fmt(row.mean)} ± {fmt(row.sd)}' if np.isfinite(row.sd) else fmt(row.mean)
    if is_base:
        diff = '(baseline)'
    elif np.isfinite(row.ci_low):
        diff = f'{fmt(row.diff, True)} [{fmt(row.ci_low, True)}, {fmt(row.ci_high, True)}]'
    else:
        diff = f'{fmt(row.diff, True)} [n/a]'
    tested = not is_base and row.section != 'run-level'
    return [row.task, row.metric, chance_cell(row), str(row.n_items) if row.n_items else '-', row.variant,
            str(row.n_seeds), spread, diff, fmt_p(row.p) if tested else '', fmt_p(row.p_adj) if tested else '',
            fmt(row.mde) if tested else '', f'**{row.marked}**' if row.marked else '']


TABLE_HEADERS = ['task', 'metric', 'chance', 'items', 'variant', 'seeds', 'mean ± sd', 'Δ vs {baseline} [95% CI]',
                 'p', 'p adj', 'MDE', 'marked']
METHOD_NAMES = {'holm': 'Holm (family-wise error)', 'bh': 'Benjamini-Hochberg (false discovery rate)'}


def section_intro(section: str, m: int, method: str, alpha: float) -> str:
    mde = (f'**MDE**: the smallest true difference this comparison detects with 80% power at level {alpha}/{m}, '
           'from its observed item differences (discordance for 0/1 values).')
    if section == 'headline':
        return (f'### Headline comparisons\n\nThe declared family: {m} tests, p adjusted together by '
                f'{METHOD_NAMES[method]}. {mde}')
    if section == 'exploratory':
        return (f'### Exploratory comparisons\n\nEverything else: {m} tests, p adjusted by '
                f'{METHOD_NAMES["bh"]} among themselves. {mde}')
    return ('### Run-level rows (description only)\n\nOne value per run (metrics.csv): mean ± sd over seeds and the '
            'mean paired difference with a Student-t 95% interval; not tested, outside both adjustments.')


def family_tables(family: Family, rows: list[Row], method: str = 'holm', alpha: float = 0.05) -> str:
    """The three sections (headline, exploratory, run-level) of a family's rows, each present one
    with its intro and its Markdown table."""
    headers = [h.format(baseline=family.baseline) for h in TABLE_HEADERS]
    parts = []
    for section in SECTIONS:
        chosen = [r for r in rows if r.section == section]
        if chosen:
            m = sum(np.isfinite(r.p) for r in chosen)
            parts.append(section_intro(section, m, method, alpha) + '\n\n'
                         + markdown_table(headers, [table_cells(r, family.baseline) for r in chosen]))
    return '\n\n'.join(parts)


def records_cell(run: Run) -> str:
    return '; '.join(f'{kind} {", ".join(f"{t:,}" for t in sorted(by_tokens))}' for kind, by_tokens in run.records.items())


def family_section(family: Family, rows: list[Row], method: str, alpha: float) -> str:
    settings = family.header['settings']
    runs = sorted(family.runs, key=lambda r: (r.variant, r.seed))
    run_lines = [f'| {r.variant} | {r.seed} | {r.name} | {objective_label(r)} | {records_cell(r)} | {r.folder} |'
                 for r in runs]
    lines = [
        f'## Family {family.label}',
        '',
        f'Model: {json.dumps(family.model, sort_keys=True)}',
        '',
        f'Compared at **{family.tokens:,} tokens** (batch {family.batch}), the last evaluation that every run of the '
        f'family has reached (or `--at-tokens`), on {", ".join(family.kinds)} records. Baseline: **{family.baseline}**, '
        f'paired by seed replica and item (task, doc_id). **marked**: adjusted p < {alpha} and the 95% CI excludes 0 '
        '(better/worse by the metric\'s direction).',
        '',
        f'Evaluation settings (equal for every run): tasks {settings["tasks"]}, limit {settings["limit"]}, '
        f'num_fewshot {settings["num_fewshot"]}, few-shot seed {settings["fewshot_random_seed"]}, autocast '
        f'{settings["autocast"]}, tokenizer sha256 {settings["tokenizer_hash"][:12]}…',
        '',
        '| variant | seed | run | objective | records at tokens | folder |',
        '|---|---|---|---|---|---|',
        *run_lines,
        '',
        family_tables(family, rows, method, alpha),
    ]
    if family.notes:
        lines += ['', 'Notes:', *[f'- {n}' for n in family.notes]]
    return '\n'.join(lines) + '\n'


def rows_frame(rows_by_family: dict[str, list[Row]]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(r) for rows in rows_by_family.values() for r in rows])


def forest_plot(family: Family, rows: list[Row], path: str) -> Optional[str]:
    """One panel per headline metric, every variant a row: its difference to the baseline with its
    95% CI (green/red: marked better/worse, purple: marked without a direction), the MDE as a grey
    band around 0."""
    compared = [r for r in rows if r.variant != family.baseline and r.section == 'headline']
    labels = list(dict.fromkeys(r.label for r in compared))
    if not labels:
        return None
    variants = sorted({r.variant for r in compared})
    ncols = min(3, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    panel_height = 0.28 * len(variants) + 0.9
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, panel_height * nrows + 0.6), squeeze=False)
    colors = {'better': 'tab:green', 'worse': 'tab:red', 'differs': 'tab:purple', '': 'black'}
    for ax, label in zip(axes.flat, labels):
        panel = [r for r in compared if r.label == label]
        for r in panel:
            y = variants.index(r.variant)
            if np.isfinite(r.mde):
                ax.plot([-r.mde, r.mde], [y, y], color='0.85', linewidth=6, solid_capstyle='butt', zorder=0)
            has_ci = np.isfinite(r.ci_low)
            xerr = [[r.diff - r.ci_low], [r.ci_high - r.diff]] if has_ci else None
            ax.errorbar(r.diff, y, xerr=xerr, fmt='o' if has_ci else 'x', color=colors[r.marked], capsize=3, markersize=4)
        ax.axvline(0, color='gray', linewidth=0.8, linestyle='--')
        ax.set_yticks(range(len(variants)), variants, fontsize=8)
        ax.set_ylim(-0.6, len(variants) - 0.4)
        ax.invert_yaxis()
        direction = {True: ' (higher is better)', False: ' (lower is better)'}.get(panel[0].higher_is_better, '')
        ax.set_title(f'{label}{direction}', fontsize=9)
        ax.tick_params(axis='x', labelsize=8)
        ax.grid(axis='x', alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis('off')
    fig.suptitle(f'{family.label}: difference to {family.baseline} at {family.tokens:,} tokens, headline metrics\n'
                 '95% CI; green/red: marked after adjustment; grey band: ±MDE (80% power)', fontsize=10)
    return save_figure(fig, path)
