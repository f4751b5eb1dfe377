"""Check the planned MDEs by simulation: ``uv run python scripts/power_simulation.py [--simulations 400] [--seed 0]``.

For each planned comparison of ``scripts/plan_power.py`` (defaults: 8 variants x 3 seeds), plant a
true difference equal to its stated MDE in simulated item data that match the plan's assumptions,
test it as the report does (``stats.sign_flip_test`` on the seed-averaged item differences: exact
for 0/1 data, normal approximation for real values), adjust it together with the ``m - 1`` other
comparisons of its section (true nulls, uniform p-values; Holm for the headline family, BH for the
exploratory one) and count how often it is detected (adjusted p < alpha). At 80% power the rate
should be ~80% (70-90% allowing for the approximations and 400 simulations).

Simulated seed pair ``k``, item ``i``: for 0/1 metrics ``d[k, i]`` is +1 with probability
``(discordance + MDE) / 2``, -1 with ``(discordance - MDE) / 2``, else 0; for real-valued metrics
``d[k, i] ~ N(MDE, sd^2)``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from prefix_composer.analysis.power import PlanRow, plan_rows
from prefix_composer.analysis.stats import adjust_pvalues, sign_flip_test


def planted_differences(row: PlanRow, seeds: int, gen: np.random.Generator) -> np.ndarray:
    """Seed-averaged item differences with the row's MDE planted."""
    if row.kind == 'discordance':
        u = gen.random((seeds, row.items))
        d = np.where(u < (row.spread + row.mde) / 2, 1.0, np.where(u < row.spread, -1.0, 0.0))
    else:
        d = gen.normal(row.mde, row.spread, size=(seeds, row.items))
    return d.mean(axis=0)


def detection_rate(row: PlanRow, seeds: int, alpha: float, simulations: int, gen: np.random.Generator) -> float:
    """Share of ``simulations`` tables in which the planted row is detected after adjustment over
    its section's ``m = alpha / row.level`` comparisons."""
    m = round(alpha / row.level)
    method = 'holm' if row.section == 'headline' else 'bh'
    found = 0
    for _ in range(simulations):
        p, _ = sign_flip_test(planted_differences(row, seeds, gen))
        found += adjust_pvalues([p, *gen.random(m - 1)], method=method)[0] < alpha
    return found / simulations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--simulations', type=int, default=400)
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--variants', type=int, default=8)
    parser.add_argument('--alpha', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    gen = np.random.default_rng(args.seed)
    start = time.perf_counter()
    print(f'{args.simulations} simulations per row, {args.variants} variants x {args.seeds} seeds, alpha {args.alpha}, '
          f'seed {args.seed}; binomial SE of an 80% rate: {100 * np.sqrt(0.16 / args.simulations):.1f}%')
    print(f'{"comparison":30} {"section":12} {"items":>7} {"MDE":>8} {"m":>4} {"detected":>9}')
    for row in plan_rows(seeds=args.seeds, variants=args.variants, alpha=args.alpha):
        rate = detection_rate(row, args.seeds, args.alpha, args.simulations, gen)
        print(f'{row.label:30} {row.section:12} {row.items:7d} {row.mde:8.4f} {round(args.alpha / row.level):4d} '
              f'{100 * rate:8.1f}%', flush=True)
    print(f'({time.perf_counter() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
