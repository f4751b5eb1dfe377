"""Compare objectives on the same items: ``uv run python scripts/compare_runs.py RUN_FOLDER... [--baseline ce] [--at-tokens T]``.

Each RUN_FOLDER is a run folder (``<run_root>/<run_name>`` with ``lm_eval/`` per-item records and
``metrics.csv``) or a folder of them (``/mnt/runs``). Runs are grouped by model family (their
recorded model config) and seed replica, compared against the baseline at the last evaluation that
every run of the family has reached, and the report is written to ``--out-dir`` (default
``<runs>/report``): ``results.md`` (per family: runs, settings, the headline, exploratory and
run-level tables), ``results.csv`` (every number, its ``section`` column naming the table) and
``forest_<family>.png`` (difference to the baseline with 95% CI, one panel per headline metric).
The tables are printed. Every record kind in the run folders (``lm_eval/``, ``validation/``,
``probes/``, ``recovery/``) is compared. What is compared and why: ``docs/design.md``
(Comparisons); how to read it and the method: ``docs/statistics.md`` and ``prefix_composer/analysis/`` (``runs``, ``families``, ``rows``, ``render``, ``report``).
"""

from __future__ import annotations

import argparse
import sys

from prefix_composer.analysis.render import METHOD_NAMES, family_tables
from prefix_composer.analysis.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', metavar='RUN_FOLDER', help='run folders, or folders of run folders')
    parser.add_argument('--baseline', default='ce', help='variant (run name without _seed<k>) or objective to compare '
                                                          'against (default ce: in the ~500M family it is b000_ce)')
    parser.add_argument('--at-tokens', type=int, help='compare at this evaluation (every run must have records there)')
    parser.add_argument('--adjust', choices=sorted(METHOD_NAMES), default='holm',
                        help='adjustment of the headline family (the exploratory rows always get BH)')
    parser.add_argument('--alpha', type=float, default=0.05, help='level of the marks (adjusted p and CI excluding 0)')
    parser.add_argument('--n-boot', type=int, default=10_000, help='bootstrap replicates per CI')
    parser.add_argument('--n-perm', type=int, default=10_000,
                        help='random sign flips per p-value where neither exact nor normal p applies (stats.sign_flip_test)')
    parser.add_argument('--out-dir', help='where results.md, results.csv and the forest plots go (default <runs>/report)')
    args = parser.parse_args(argv)
    report = write_report(args.runs, out_dir=args.out_dir, baseline=args.baseline, at_tokens=args.at_tokens,
                          method=args.adjust, alpha=args.alpha, n_boot=args.n_boot, n_perm=args.n_perm)
    for family in report.families:
        print(f'\nFamily {family.label}: {len(family.runs)} runs at {family.tokens:,} tokens, baseline {family.baseline}')
        print(family_tables(family, report.rows[family.label], args.adjust, args.alpha))
        for note in family.notes:
            print(f'note: {note}')
    print()
    for name, path in report.paths.items():
        print(f'Wrote {name}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
