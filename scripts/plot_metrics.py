"""Training curves: ``uv run python scripts/plot_metrics.py [runs folder] [--out-dir DIR]``.

Reads ``<runs>/<variant>/metrics.csv`` (written by ``prefix_composer.training.csv_logger``), groups
the runs by model family (the model config recorded in their lm-eval records, as
``scripts/compare_runs.py`` does; runs without records go to family ``unrecorded``), and draws for
each family, against tokens seen, one line per run and one PNG per metric family:

* ``metrics_train_loss.png``: the training objective (``loss/train/total``) and its plain NLL
  (``loss/train/nll``), phase ``train`` rows;
* ``metrics_val_nll.png``: validation NLL (``metrics/eval/LanguageCrossEntropy``), phase ``eval``;
* ``metrics_lm_eval_<task>.png``: every metric of that lm-eval task
  (``metrics/lm_eval/<task>/<metric>``), shaded +- its ``<metric>_stderr`` where logged.

``summary.md`` tabulates each run's final value of every metric (its last row that has it),
with +- stderr for lm-eval metrics. Outputs go to ``<out-dir>/<family>/`` (default out-dir
``<runs>/summary``). The default runs folder is where the production YAMLs write
(``variables.run_root`` of ``yamls/base/*.yaml``). Paired comparisons with confidence intervals:
``scripts/compare_runs.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
import sys

import pandas as pd
from omegaconf import OmegaConf

from prefix_composer.analysis.families import family_labels, group_by_model
from prefix_composer.analysis.plotting import markdown_table, plt, save_figure
from prefix_composer.analysis.runs import expand_run_folders, recorded_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNRECORDED = 'unrecorded'

REQUIRED_COLUMNS = ('batch', 'tokens', 'phase')
TRAIN_METRICS = {'loss/train/total': 'train objective', 'loss/train/nll': 'train NLL'}
VAL_METRICS = {'metrics/eval/LanguageCrossEntropy': 'validation NLL'}
LM_EVAL_PREFIX = 'metrics/lm_eval/'
STDERR = '_stderr'
# Line style and marker vary with the variant too, so that coinciding curves stay visible.
LINESTYLES = ('-', '--', '-.', ':')
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')


@dataclasses.dataclass(frozen=True)
class Figure:
    """One PNG: ``file`` stem, title, and the (column, label) of each panel."""

    file: str
    title: str
    panels: tuple[tuple[str, str], ...]


def load_runs(runs_dir: str) -> dict[str, pd.DataFrame]:
    """{run folder: its metrics.csv} for the run folders of ``runs_dir`` (``runs.expand_run_folders``)
    that have one, sorted by name; clear errors for missing/malformed files."""
    if not os.path.isdir(runs_dir):
        raise FileNotFoundError(f'No runs folder {runs_dir}.')
    paths = [os.path.join(f, 'metrics.csv') for f in expand_run_folders([runs_dir])
             if os.path.isfile(os.path.join(f, 'metrics.csv'))]
    if not paths:
        raise FileNotFoundError(f'No <variant>/metrics.csv under {runs_dir}.')
    runs = {}
    for path in paths:
        frame = pd.read_csv(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f'{path} lacks the columns {missing}; expected a prefix_composer metrics.csv.')
        runs[os.path.dirname(path)] = frame
    return runs


def yaml_run_root() -> str:
    """``variables.run_root`` of the production YAMLs (``yamls/base/*.yaml``), which must agree."""
    roots = {os.path.basename(p): OmegaConf.load(p).variables.run_root
             for p in sorted(glob.glob(os.path.join(REPO, 'yamls', 'base', '*.yaml')))}
    if len(set(roots.values())) != 1:
        raise ValueError(f'The base YAMLs write to different run roots {roots}; pass the runs folder.')
    return next(iter(roots.values()))


def group_by_family(runs: dict[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """``{family: {variant: metrics}}`` with the report's families (``families.group_by_model`` of
    the model recorded in each run's lm-eval records, ``families.family_labels``), sorted,
    ``unrecorded`` (no records) last."""
    models = {folder: recorded_model(folder) for folder in runs}
    groups = group_by_model(runs, models.get)
    recorded = [g for g in groups if models[g[0]] is not None]
    labels = family_labels([models[g[0]] for g in recorded])
    families = {label: g for label, g in zip(labels, recorded)}
    families.update({UNRECORDED: g for g in groups if models[g[0]] is None})
    return {label: {os.path.basename(folder): runs[folder] for folder in folders}
            for label, folders in sorted(families.items(), key=lambda item: (item[0] == UNRECORDED, item[0]))}


def split_lm_eval(column: str) -> tuple[str, str]:
    """``metrics/lm_eval/<task>/<metric>`` -> (task, metric); metric may hold a ``/<filter>`` suffix."""
    task, _, metric = column[len(LM_EVAL_PREFIX):].partition('/')
    return task, metric


def stderr_column(column: str) -> str:
    """Column of a metric's stderr: ``.../acc`` -> ``.../acc_stderr``, ``.../acc/filter`` -> ``.../acc_stderr/filter``."""
    task, metric = split_lm_eval(column)
    name, sep, filt = metric.partition('/')
    return f'{LM_EVAL_PREFIX}{task}/{name}{STDERR}{sep}{filt}'


def lm_eval_columns(runs: dict[str, pd.DataFrame]) -> list[str]:
    """Every lm-eval metric column (not stderr) of any run, in first-seen order."""
    columns = dict.fromkeys(c for frame in runs.values() for c in frame.columns if c.startswith(LM_EVAL_PREFIX))
    return [c for c in columns if STDERR not in split_lm_eval(c)[1]]


def figures(runs: dict[str, pd.DataFrame]) -> list[Figure]:
    out = [Figure('metrics_train_loss', 'training loss', tuple(TRAIN_METRICS.items())),
           Figure('metrics_val_nll', 'validation NLL', tuple(VAL_METRICS.items()))]
    tasks: dict[str, list[tuple[str, str]]] = {}
    for column in lm_eval_columns(runs):
        task, metric = split_lm_eval(column)
        tasks.setdefault(task, []).append((column, metric))
    out += [Figure(f'metrics_lm_eval_{task}', f'lm-eval {task}', tuple(panels)) for task, panels in tasks.items()]
    return out


def series(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows that have ``column``, as tokens/value(/stderr), in token order."""
    if column not in frame.columns:
        return pd.DataFrame(columns=['tokens', 'value', 'stderr'])
    rows = frame[frame[column].notna()].sort_values('tokens', kind='stable')
    err = stderr_column(column) if column.startswith(LM_EVAL_PREFIX) else None
    return pd.DataFrame({
        'tokens': rows['tokens'].to_numpy(),
        'value': rows[column].to_numpy(dtype=float),
        'stderr': rows[err].to_numpy(dtype=float) if err in rows.columns else float('nan'),
    })


def plot_figure(fig_spec: Figure, runs: dict[str, pd.DataFrame], out_dir: str) -> str | None:
    """One panel per metric, one line per variant (same style in every PNG); None if no run has data."""
    palette = plt.cm.tab10 if len(runs) <= 10 else plt.cm.tab20
    styles = {name: dict(color=palette(i % palette.N), linestyle=LINESTYLES[i % len(LINESTYLES)],
                         marker=MARKERS[i % len(MARKERS)]) for i, name in enumerate(runs)}
    if not any(len(series(frame, c)) for c, _ in fig_spec.panels for frame in runs.values()):
        return None
    fig, axes = plt.subplots(1, len(fig_spec.panels), figsize=(6.5 * len(fig_spec.panels), 4.5), squeeze=False)
    for ax, (column, label) in zip(axes[0], fig_spec.panels):
        for name, frame in runs.items():
            data = series(frame, column)
            if data.empty:
                continue
            style = styles[name]
            ax.plot(data['tokens'], data['value'], label=name, markersize=4, markevery=max(1, len(data) // 20),
                    **style)
            if data['stderr'].notna().any():
                ax.fill_between(data['tokens'], data['value'] - data['stderr'], data['value'] + data['stderr'],
                                color=style['color'], alpha=0.12, linewidth=0)
        ax.set_title(fig_spec.title if len(fig_spec.panels) == 1 else f'{fig_spec.title}: {label}')
        ax.set_xlabel('tokens seen')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize='small', loc='best')
    return save_figure(fig, os.path.join(out_dir, f'{fig_spec.file}.png'))


def final_cell(frame: pd.DataFrame, column: str) -> str:
    data = series(frame, column)
    if data.empty:
        return '-'
    value, err = data['value'].iloc[-1], data['stderr'].iloc[-1]
    return f'{value:.4f}' if math.isnan(err) else f'{value:.4f} ± {err:.4f}'


def summary_table(runs: dict[str, pd.DataFrame]) -> str:
    """Markdown: one row per variant, its final value of every metric, and the tokens of its last row."""
    columns = [*TRAIN_METRICS, *VAL_METRICS, *lm_eval_columns(runs)]
    headers = ['variant', 'tokens'] + [TRAIN_METRICS.get(c) or VAL_METRICS.get(c) or '/'.join(split_lm_eval(c))
                                       for c in columns]
    rows = [[name, f'{int(frame["tokens"].max()):,}'] + [final_cell(frame, c) for c in columns]
            for name, frame in runs.items()]
    return markdown_table(headers, rows)


def write_plots(runs_dir: str, out_root: str) -> dict[str, tuple[str, str, list[str]]]:
    """Per family: its run names, summary table and the files written to ``<out_root>/<family>/`` (PNGs, then summary.md)."""
    out = {}
    for family, runs in group_by_family(load_runs(runs_dir)).items():
        out_dir = os.path.join(out_root, family)
        written = [path for spec in figures(runs) if (path := plot_figure(spec, runs, out_dir))]
        table = summary_table(runs)
        os.makedirs(out_dir, exist_ok=True)
        written.append(os.path.join(out_dir, 'summary.md'))
        with open(written[-1], 'w') as f:
            f.write(f'# Final values of {len(runs)} runs of family {family} in {runs_dir}\n\n{table}\n')
        out[family] = (', '.join(runs), table, written)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('runs_dir', nargs='?', help='folder of <variant>/metrics.csv (default: the YAMLs\' run_root)')
    parser.add_argument('--out-dir', help='where <family>/ with PNGs and summary.md goes (default: <runs>/summary)')
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir or yaml_run_root()
    for family, (names, table, written) in write_plots(runs_dir, args.out_dir or os.path.join(runs_dir, 'summary')).items():
        print(f'\nFamily {family}: {names}')
        print(table)
        for path in written:
            print(f'Wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
