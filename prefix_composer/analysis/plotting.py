"""Helpers shared by the plotting scripts: headless matplotlib and Markdown tables."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use('Agg')  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: 'plt.Figure', path: str) -> str:
    """Write ``fig`` as PNG to ``path`` (folders created), close it, return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f'Row {row!r} has {len(row)} cells for {len(headers)} headers.')
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)
