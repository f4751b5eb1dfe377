"""The comparison report: run folders (``runs``) -> families (``families``) -> paired comparisons
against the baseline (``rows``) -> ``results.md``, ``results.csv`` and forest plots (``render``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from prefix_composer.analysis.families import Family, build_families
from prefix_composer.analysis.render import METHOD_NAMES, family_section, forest_plot, rows_frame
from prefix_composer.analysis.rows import Row, compare_families
from prefix_composer.analysis.runs import expand_run_folders, load_run


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
