"""docs/bad_inputs.md is scripts/bad_inputs_table.py's output for the tests' current tables: one row
per case, in order, each refused, its message holding what the case's test asserts."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'scripts'))

import bad_inputs_table  # noqa: E402


def doc_rows() -> list[list[str]]:
    lines = (REPO / 'docs' / 'bad_inputs.md').read_text().splitlines()
    start = lines.index('| what | input | refused with | message |') + 2
    return [[c.strip() for c in line.strip('|').split(' | ')] for line in lines[start:] if line.startswith('|')]


def test_the_table_has_every_tested_case_refused_with_the_tested_message():
    cases, rows = list(bad_inputs_table.cases()), doc_rows()
    assert [(c.group, c.shown) for c in cases] == [(r[0], r[1]) for r in rows], \
        'docs/bad_inputs.md is stale: uv run python scripts/bad_inputs_table.py'
    for case, (_, _, kind, message) in zip(cases, rows):
        assert kind != 'NOT REFUSED' and bad_inputs_table.cell(case.expected) in message, (case.shown, message)
