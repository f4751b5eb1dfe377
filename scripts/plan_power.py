"""Minimum detectable effects before a sweep: ``uv run python scripts/plan_power.py [--seeds 3] [--variants 8] ...``.

Prints, for every headline comparison of the report (and one row per exploratory kind), the
smallest true difference to the baseline that the report's test detects with 80% power, unadjusted
and at the level the report will use (``alpha / m`` over its section), from the item counts, seeds
and assumed spread given here (``prefix_composer.analysis.power``). Defaults: the full lm-eval
tasks, 11 + 11 CharBench subtasks of 300 items, the production YAMLs' 4,882 validation sequences
(the whole val split), 71,202 letter-only Llama-3 tokens for the probes, 2,000 recovery positions.
Check of the figures by simulation: ``scripts/power_simulation.py``.
"""

from __future__ import annotations

import argparse
import sys

from prefix_composer.analysis.plotting import markdown_table
from prefix_composer.analysis.power import (
    CHARBENCH_ITEMS,
    LM_EVAL_ITEMS,
    PROBE_TOKENS,
    RECOVERY_POSITIONS,
    VALIDATION_SEQUENCES,
    plan_rows,
)


def parse_items(text: str) -> dict[str, int]:
    """``hellaswag=10042,piqa=1838`` -> ``{'hellaswag': 10042, 'piqa': 1838}``."""
    try:
        return {task: int(n) for task, n in (part.split('=') for part in text.split(','))}
    except ValueError:
        raise argparse.ArgumentTypeError(f'--tasks {text!r}: expected task=items[,task=items...], e.g. hellaswag=10042') from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, default=3, help='seed replicas per variant')
    parser.add_argument('--variants', type=int, default=8, help='objectives in the family, the baseline included')
    parser.add_argument('--alpha', type=float, default=0.05)
    parser.add_argument('--tasks', type=parse_items, default=LM_EVAL_ITEMS, help='lm-eval tasks and their item counts')
    parser.add_argument('--discordance', type=float, default=0.25,
                        help='share of items on which a variant and its paired baseline run disagree (0/1 tasks)')
    parser.add_argument('--charbench-items', type=int, default=CHARBENCH_ITEMS)
    parser.add_argument('--validation-sequences', type=int, default=VALIDATION_SEQUENCES)
    parser.add_argument('--validation-sd', type=float, default=0.05, help='sd of a sequence\'s NLL difference, nats')
    parser.add_argument('--probe-tokens', type=int, default=PROBE_TOKENS)
    parser.add_argument('--probe-discordance', type=float, default=0.1)
    parser.add_argument('--recovery-positions', type=int, default=RECOVERY_POSITIONS)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.variants < 2:
        parser.error('--seeds must be >= 1 and --variants >= 2 (the baseline and one more)')
    rows = plan_rows(seeds=args.seeds, variants=args.variants, alpha=args.alpha, discordance=args.discordance,
                     lm_eval_items=args.tasks, charbench_items=args.charbench_items,
                     validation_sequences=args.validation_sequences, validation_sd=args.validation_sd,
                     probe_tokens=args.probe_tokens, probe_discordance=args.probe_discordance,
                     recovery_positions=args.recovery_positions)
    print(f'{args.variants} variants x {args.seeds} seeds, alpha {args.alpha}, 80% power; MDE in the metric\'s units '
          '(accuracy: fraction; NLL, log p: nats)')
    print(markdown_table(['comparison', 'section', 'items', 'assumed', 'level', 'MDE unadjusted', 'MDE at level'],
                         [[r.label, r.section, f'{r.items:,}', f'{r.kind} {r.spread:g}', f'{r.level:.2g}',
                           f'{r.mde_unadjusted:.4f}', f'{r.mde:.4f}'] for r in rows]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
