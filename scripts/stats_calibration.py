"""Calibration of ``prefix_composer.analysis.stats`` by simulation:
``uv run python scripts/stats_calibration.py [--simulations N] [--items N] [--seed S]``.

Null cases draw the variant and the baseline from the same per-item distribution and report how
often p < 0.05 (a calibrated test: ~5%) and how often the 95% bootstrap interval holds the true
difference 0. 0/1 items are correct with probability ``p_i = 0.95 * Beta(0.5, 0.5)`` (mostly easy
or hard items, as on real benchmarks); per-item NLLs are ``mu_i + run noise`` with
``mu_i ~ Gamma(2, 1)`` and noise sd 0.5 nats. The last null case adds a shift per trained run
(same distribution for both objectives): the item-level p-value treats it as a real difference
between the runs. The planted case is a table of 10 one-seed accuracy comparisons, one with
``+5`` points (``p_i + 0.05`` for the variant, exactly 5 points in expectation), nine null, Holm
across the table. Output is fixed by ``--seed``.
"""

from __future__ import annotations

import argparse
from typing import Callable

import numpy as np

from prefix_composer.analysis.stats import adjust_pvalues, compare, paired_pvalue

N_SEEDS = 3  # seed replicas in the multi-seed cases
N_BOOT = 1000  # bootstrap replicates per simulated comparison
N_PERM = 999  # random sign vectors per sign-flip p-value
PLANTED = 0.05
N_COMPARISONS = 10
RUN_SHIFT_SD = 0.01  # nats, per trained run, in the last null case

Runs = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def item_probabilities(gen: np.random.Generator, n_items: int) -> np.ndarray:
    return 0.95 * gen.beta(0.5, 0.5, size=n_items)


def bernoulli_runs(p: np.ndarray, n_seeds: int, gen: np.random.Generator) -> np.ndarray:
    """[n_seeds, n_items] 0/1 outcomes, item i correct with probability p[i]."""
    return (gen.random((n_seeds, p.size)) < p).astype(float)


def accuracy_null(n_seeds: int) -> Runs:
    def draw(gen, n_items):
        p = item_probabilities(gen, n_items)
        return bernoulli_runs(p, n_seeds, gen), bernoulli_runs(p, n_seeds, gen)
    return draw


def nll_null(run_shift_sd: float) -> Runs:
    def draw(gen, n_items):
        mu = gen.gamma(2.0, 1.0, size=n_items)
        return tuple(mu + gen.normal(0, run_shift_sd, size=(N_SEEDS, 1)) + gen.normal(0, 0.5, size=(N_SEEDS, n_items))
                     for _ in range(2))
    return draw


NULL_CASES = {
    'acc, 1 seed': accuracy_null(1),
    f'acc, {N_SEEDS} seeds': accuracy_null(N_SEEDS),
    f'NLL, {N_SEEDS} seeds': nll_null(0.0),
    f'NLL, {N_SEEDS} seeds, run shift sd {RUN_SHIFT_SD}': nll_null(RUN_SHIFT_SD),
}


def null_calibration(draw: Runs, n_sims: int, n_items: int, gen: np.random.Generator) -> tuple[str, float, float]:
    """(test, share of p < 0.05, share of 95% intervals holding 0) over ``n_sims`` null tables."""
    rows = [compare(*draw(gen, n_items), n_boot=N_BOOT, n_perm=N_PERM, rng=gen) for _ in range(n_sims)]
    rejected = np.mean([row.p < 0.05 for row in rows])
    covered = np.mean([row.ci_low <= 0 <= row.ci_high for row in rows])
    return rows[0].test, float(rejected), float(covered)


def planted_table(n_items: int, gen: np.random.Generator):
    """The planted comparison (``compare``) and the Holm-adjusted p of all 10 rows."""
    p = item_probabilities(gen, n_items)
    planted = compare(bernoulli_runs(p + PLANTED, 1, gen), bernoulli_runs(p, 1, gen), n_boot=N_BOOT, rng=gen)
    nulls = [paired_pvalue(bernoulli_runs(p, 1, gen), bernoulli_runs(p, 1, gen))[0] for _ in range(N_COMPARISONS - 1)]
    return planted, adjust_pvalues([planted.p] + nulls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--simulations', type=int, default=200)
    parser.add_argument('--items', type=int, default=2000)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    gen = np.random.default_rng(args.seed)
    se = np.sqrt(0.05 * 0.95 / args.simulations)
    print(f'{args.simulations} simulations, {args.items} items, seed {args.seed}; '
          f'{N_BOOT} bootstrap replicates, {N_PERM} sign vectors; binomial SE of a 5% rate: {se:.1%}')
    print('\nNull: same per-item distribution for variant and baseline')
    print(f'  {"case":<32} {"test":<16} {"p<0.05":>7} {"95% CI holds 0":>15}')
    for name, draw in NULL_CASES.items():
        test, rejected, covered = null_calibration(draw, args.simulations, args.items, gen)
        print(f'  {name:<32} {test:<16} {rejected:>7.1%} {covered:>15.1%}')

    print(f'\nPlanted: +{100 * PLANTED:.0f} points accuracy, 1 seed, among {N_COMPARISONS} comparisons '
          f'({N_COMPARISONS - 1} null), Holm across the table')
    tables = [planted_table(args.items, gen) for _ in range(args.simulations)]
    planted, holm = tables[0]
    print(f'  simulation 0: diff {planted.diff:+.4f}, 95% CI [{planted.ci_low:+.4f}, {planted.ci_high:+.4f}], '
          f'p {planted.p:.2e} ({planted.test}), Holm p {holm[0]:.2e}')
    detected = np.mean([h[0] < 0.01 for _, h in tables])
    false_alarm = np.mean([(h[1:] < 0.05).any() for _, h in tables])
    covered = np.mean([row.ci_low <= PLANTED <= row.ci_high for row, _ in tables])
    excludes_zero = np.mean([row.ci_low > 0 for row, _ in tables])
    print(f'  planted found at Holm p < 0.01: {detected:.1%}; any null at Holm p < 0.05: {false_alarm:.1%}')
    print(f'  95% CI holds +{PLANTED}: {covered:.1%}; 95% CI excludes 0: {excludes_zero:.1%}')


if __name__ == '__main__':
    main()
