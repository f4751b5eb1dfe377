"""prefix_composer.analysis.stats against answers computed here: McNemar and sign-flip p-values by
brute-force enumeration, Holm/BH by hand, a planted +5-point effect, null calibration of both
tests and bootstrap coverage by simulation."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize
from scipy.stats import binomtest, norm

from lm_eval_helpers import load_script
from prefix_composer.analysis.power import plan_rows
from prefix_composer.analysis.stats import (
    adjust_pvalues,
    compare,
    mcnemar_exact_pvalue,
    mean_sd_over_seeds,
    paired_bootstrap_ci,
    paired_difference,
    paired_pvalue,
    minimum_detectable_effect,
    sign_flip_pvalue,
    sign_flip_test,
)


def bernoulli_runs(p: np.ndarray, n_seeds: int, gen: np.random.Generator) -> np.ndarray:
    """[n_seeds, n_items] 0/1 outcomes, item i correct with probability p[i] in every seed."""
    return (gen.random((n_seeds, p.size)) < p).astype(float)


def outcomes(b: int, c: int, both_right: int, both_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed's (x, y) with b items (1, 0), c items (0, 1) and the concordant rest."""
    x = np.array([1] * b + [0] * c + [1] * both_right + [0] * both_wrong)
    y = np.array([0] * b + [1] * c + [1] * both_right + [0] * both_wrong)
    return x, y


def enumerated_sign_flip_p(d: list[float]) -> float:
    """Share of all 2^n sign vectors s with |sum s_i d_i| >= |sum d_i| (1e-9 absorbs rounding)."""
    observed = abs(sum(d))
    hits = sum(abs(sum(s * v for s, v in zip(signs, d))) >= observed - 1e-9
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


@pytest.mark.parametrize('b, c', [(0, 0), (0, 1), (5, 0), (3, 7), (10, 10), (1, 12), (9, 4)])
def test_mcnemar_matches_binomial_enumeration(b, c):
    # Under H0 each of the n = b + c discordant items is (1, 0) with probability 1/2, so
    # P(B = k) = C(n, k) / 2^n; the two-sided exact p-value sums the outcomes no more likely than
    # the observed b (n = 0: no evidence, p = 1). Concordant items must not matter.
    n = b + c
    expected = sum(math.comb(n, k) for k in range(n + 1) if math.comb(n, k) <= math.comb(n, b)) / 2 ** n
    x, y = outcomes(b, c, both_right=6, both_wrong=3)
    assert mcnemar_exact_pvalue(x, y) == pytest.approx(expected, rel=1e-12)
    # With one seed and 0/1 data, d = x - y is +-1 on discordant items and 0 elsewhere, so the
    # exact sign-flip test is the same binomial test.
    assert sign_flip_pvalue(x - y) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rejects_multi_seed_and_non_binary():
    x, y = outcomes(3, 1, 2, 2)
    with pytest.raises(ValueError, match='one seed'):
        mcnemar_exact_pvalue(np.stack([x, x]), np.stack([y, y]))
    with pytest.raises(ValueError, match='0/1'):
        mcnemar_exact_pvalue(x * 0.5, y)


@pytest.mark.parametrize('d', [
    [0.3, -1.2, 0.5, 2.0, -0.1, 0.7],
    [1.0, 1.0, -1.0, 1.0, 0.0, 1.0, 0.0, -1.0, 1.0, 1.0],  # ties and zeros, as 0/1 data gives
    [1 / 3, 2 / 3, -1 / 3, 1.0, 1 / 3, -2 / 3, 2 / 3, 1 / 3],  # 3-seed averages of 0/1
    [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5],  # all positive: p = 2 / 2^10
    [1.5, -1.5],  # observed sum 0: p = 1
])
def test_sign_flip_matches_enumeration(d):
    # The exact test is the share of the 2^n equally likely sign vectors (H0: d_i symmetric)
    # whose |signed sum| reaches the observed one, enumerated here with itertools.
    assert sign_flip_pvalue(d) == pytest.approx(enumerated_sign_flip_p(d), rel=1e-12)


def test_sign_flip_zero_differences_keep_the_exact_test():
    # Zeros contribute nothing whatever their sign: 30 of them multiply both the count of
    # reaching sign vectors and the total by 2^30, so p is the enumeration over the 8 non-zero
    # differences, and stays exact although n = 38 > exact_max.
    nonzero = [0.4, -0.2, 1.1, 0.9, 0.3, -0.5, 0.8, 0.6]
    d = nonzero + [0.0] * 30
    assert sign_flip_pvalue(d, n_perm=10, exact_max=16) == pytest.approx(enumerated_sign_flip_p(nonzero), rel=1e-12)


def test_sign_flip_monte_carlo_counts_the_observed_statistic():
    # 30 positive differences: only the all-plus and all-minus vectors (2 in 2^30) reach the
    # observed sum, so 99 random draws reach it none of the time and p = (0 + 1) / (99 + 1).
    # (Not on a lattice of small step and m_eff < 100, so Monte Carlo is what the test uses.)
    d = np.random.default_rng(2).uniform(0.1, 3.0, 30)
    assert sign_flip_test(d, n_perm=99, exact_max=20) == (pytest.approx(0.01), 'monte_carlo')
    # Forced Monte Carlo on 16 differences: p = (b + 1) / (m + 1) for an integer b, within
    # 0.01 (~3 standard errors, sqrt(0.25 / 20000) = 0.0035) of the exact enumeration.
    d = np.random.default_rng(3).normal(0.3, 1.0, size=16)
    p = sign_flip_pvalue(d, n_perm=20_000, rng=5, exact_max=0)
    assert p * 20_001 == pytest.approx(round(p * 20_001), abs=1e-6)
    assert abs(p - sign_flip_pvalue(d)) < 0.01
    # Same seed, same answer.
    assert sign_flip_pvalue(d, n_perm=20_000, rng=5, exact_max=0) == p


def test_paired_pvalue_chooses_the_test():
    x, y = outcomes(9, 2, 20, 10)
    assert paired_pvalue(x[None], y[None]) == (mcnemar_exact_pvalue(x, y), 'mcnemar')
    # Two seeds of 0/1 data: sign-flip on the seed-averaged differences.
    x2, y2 = np.stack([x, y]), np.stack([y, y])
    assert paired_pvalue(x2, y2) == (sign_flip_pvalue((x2 - y2).mean(axis=0)), 'sign_flip exact')
    # One seed of real values (per-item NLL): sign-flip.
    assert paired_pvalue(x[None] + 0.5, y[None])[1] == 'sign_flip exact'


def test_planted_five_points_found_among_nine_nulls():
    # 2,000 items with p_i = 0.95 * Beta(0.5, 0.5), so p_i + 0.05 <= 1 and the variant's expected
    # accuracy is exactly 5 points above the baseline's. Runs are independent given p_i: ~27% of
    # items are discordant, SE(D) ~ sqrt(0.27 / 2000) = 0.012, expected z ~ 4.3, so Holm p < 0.01
    # (raw p < 0.001 with 10 rows) is reached by ~84% of such tables (stats_calibration.py
    # measures 83.5%); this draw has D = 0.060, raw p = 1.1e-7. The nine nulls (one-seed 0/1,
    # 3-seed 0/1, 3-seed real-valued NLL) share their baseline's per-item distribution.
    gen = np.random.default_rng(0)
    p = 0.95 * gen.beta(0.5, 0.5, size=2000)
    nll = gen.gamma(2.0, 1.0, size=2000)
    table = [(bernoulli_runs(p + 0.05, 1, gen), bernoulli_runs(p, 1, gen))]
    for n_seeds in (1, 1, 1, 3, 3, 3):
        table.append((bernoulli_runs(p, n_seeds, gen), bernoulli_runs(p, n_seeds, gen)))
    for _ in range(3):
        table.append(tuple(nll + gen.normal(0, 0.5, size=(3, 2000)) for _ in range(2)))
    rows = [compare(x, y, n_boot=1000, n_perm=2000, rng=k) for k, (x, y) in enumerate(table)]
    holm = adjust_pvalues([row.p for row in rows])
    planted = rows[0]
    assert planted.test == 'mcnemar' and (planted.n_seeds, planted.n_items) == (1, 2000)
    assert holm[0] < 0.01
    assert 0 < planted.ci_low < 0.05 < planted.ci_high
    assert [row.test for row in rows[1:]] == ['mcnemar'] * 3 + ['sign_flip exact'] * 3 + ['sign_flip normal'] * 3
    # Holm keeps the chance that any null reaches 0.01 at most 1%.
    assert (holm < 0.01).tolist() == [True] + [False] * 9


def test_null_calibration_mcnemar():
    # Two one-seed runs drawn from the same p_i ~ Beta(2, 2) on 500 items, 200 times: a valid
    # level-0.05 test rejects ~5% (exact McNemar slightly less, it is discrete); 2%-8% is about
    # +-2 binomial standard errors (sqrt(0.05 * 0.95 / 200) = 1.5%).
    gen = np.random.default_rng(1)
    pvalues = []
    for _ in range(200):
        p = gen.beta(2, 2, size=500)
        pvalues.append(mcnemar_exact_pvalue(*bernoulli_runs(p, 2, gen)))
    assert 0.02 <= np.mean(np.array(pvalues) < 0.05) <= 0.08


@pytest.mark.parametrize('kind', ['nll', 'acc'])
def test_null_calibration_sign_flip_three_seeds(kind):
    # As above for the sign-flip test on 3 paired seeds of 200 items: real-valued per-item NLL
    # (item mean ~ Gamma, run noise sd 0.5) or 0/1 outcomes; 999 sign vectors resolve p = 0.05.
    gen = np.random.default_rng(2)
    rejections = 0
    for _ in range(200):
        if kind == 'nll':
            mean = gen.gamma(2.0, 1.0, size=200)
            x, y = (mean + gen.normal(0, 0.5, size=(3, 200)) for _ in range(2))
        else:
            p = gen.beta(2, 2, size=200)
            x, y = bernoulli_runs(p, 3, gen), bernoulli_runs(p, 3, gen)
        p_value, test = paired_pvalue(x, y, n_perm=999, rng=gen)
        # 200 normal differences: m_eff ~ 200 / 3 < 100, so Monte Carlo; 0/1 averages: exact
        assert test == {'nll': 'sign_flip monte_carlo', 'acc': 'sign_flip exact'}[kind]
        rejections += p_value < 0.05
    assert 0.02 <= rejections / 200 <= 0.08


def test_bootstrap_coverage_one_seed():
    # 200 one-seed data sets of 200 paired NLLs with a true mean difference of 0.1: the 95%
    # percentile interval should contain 0.1 about 95% of the time (190/200); 90%-99% is about
    # +-3 binomial standard errors.
    gen = np.random.default_rng(4)
    covered = 0
    for k in range(200):
        y = gen.gamma(2.0, 1.0, size=(1, 200))
        x = y + 0.1 + gen.normal(0, 0.5, size=(1, 200))
        low, high = paired_bootstrap_ci(x, y, n_boot=1000, rng=k)
        covered += low <= 0.1 <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_two_level_known_answers():
    # Seed 0 differs by +0.2 on every item, seed 1 by -0.2 (plus item noise of sd 0.01). The drawn
    # seed pair is (0, 0), (0, 1) or (1, 1) with probability 1/4, 1/2, 1/4, so D* is ~+0.2, 0 or
    # -0.2, and both 2.5% tails fall inside the outer atoms: the interval is ~(-0.2, 0.2), where
    # resampling items alone would give ~0 +- 0.001.
    gen = np.random.default_rng(6)
    noise = gen.normal(0, 0.01, size=(2, 500))
    offsets = np.array([[0.2], [-0.2]])
    low, high = paired_bootstrap_ci(offsets + noise, np.zeros((2, 500)), n_boot=4000, rng=0)
    assert low == pytest.approx(-0.2, abs=0.005) and high == pytest.approx(0.2, abs=0.005)
    # Pure seed-by-item noise: two centred, orthogonal rows of population sd s = 0.01. Drawing
    # seeds (0, 0) or (1, 1) (prob 1/2) leaves item values of variance s^2, drawing (0, 1) or
    # (1, 0) (prob 1/2) averages them to variance s^2 / 2, all with mean 0; so D* is the mixture
    # 1/2 N(0, s^2 / n) + 1/2 N(0, s^2 / (2n)), whose 97.5% point q solves
    # Phi(q / s1) / 2 + Phi(q / s2) / 2 = 0.975 -- wider than the item-only 1.96 s / sqrt(2n).
    noise = gen.normal(size=(2, 500))
    noise -= noise.mean(axis=1, keepdims=True)
    noise[1] -= noise[1] @ noise[0] / (noise[0] @ noise[0]) * noise[0]
    noise *= 0.01 / noise.std(axis=1, keepdims=True)
    s1, s2 = 0.01 / np.sqrt(500), 0.01 / np.sqrt(1000)
    q = optimize.brentq(lambda t: (norm.cdf(t / s1) + norm.cdf(t / s2)) / 2 - 0.975, 0, 5 * s1)
    low, high = paired_bootstrap_ci(noise, np.zeros((2, 500)), n_boot=10_000, rng=0)
    assert (low, high) == pytest.approx((-q, q), rel=0.05)
    assert q > 1.1 * 1.96 * s2
    # A constant difference has no sampling variability at all.
    assert paired_bootstrap_ci(np.full((1, 50), 0.7), np.full((1, 50), 0.2), n_boot=100) == pytest.approx((0.5, 0.5))


def test_holm_and_bh_by_hand():
    # Holm, p = [0.01, 0.04, 0.03, 0.005], m = 4; sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1
    # = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06; back in input order:
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_pvalues(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted p * m / rank = 0.02, 0.02, 0.04, 0.04, running min from the top unchanged.
    assert adjust_pvalues(p, method='bh') == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # BH where the running min matters: sorted 0.011, 0.03, 0.04, 0.2 -> 0.044, 0.06, 0.0533,
    # 0.2 -> min from the top 0.044, 0.0533, 0.0533, 0.2.
    assert adjust_pvalues([0.04, 0.011, 0.03, 0.2], method='bh') == pytest.approx([0.16 / 3, 0.044, 0.16 / 3, 0.2])
    # NaN is skipped and not counted: m = 2, Holm 2 * 0.01 = 0.02, max(0.02, 1 * 0.04) = 0.04.
    np.testing.assert_allclose(adjust_pvalues([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    # Clipped at 1: 2 * 0.5 = 1.0, then max(1.0, 0.6).
    assert adjust_pvalues([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match='method'):
        adjust_pvalues(p, method='bonferroni')


def test_mean_sd_over_seeds():
    # Seed means 2 and 4: mean 3, sample sd sqrt(((2-3)^2 + (4-3)^2) / 1) = sqrt(2).
    assert mean_sd_over_seeds([[1, 2, 3], [3, 4, 5]]) == pytest.approx((3.0, math.sqrt(2)))
    mean, sd = mean_sd_over_seeds([[1, 0, 1, 1]])
    assert mean == 0.75 and math.isnan(sd)


def test_compare_row():
    # 3 seeds x 4 items: differences [[1, 0, 0, 1], [0, 0, 1, 1], [1, -1, 0, 1]] average to
    # 5/12 overall and to [2/3, -1/3, 1/3, 1] per item; the sign-flip enumerates 2^4 vectors.
    x = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1]])
    y = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    row = compare(x, y, n_boot=500, rng=7)
    assert row.diff == pytest.approx(5 / 12) == paired_difference(x, y)
    assert row.p == pytest.approx(enumerated_sign_flip_p([2 / 3, -1 / 3, 1 / 3, 1.0]))
    assert (row.test, row.n_items, row.n_seeds) == ('sign_flip exact', 4, 3)
    assert row.second_moment == pytest.approx(np.mean(np.array([2 / 3, -1 / 3, 1 / 3, 1.0]) ** 2))
    assert row.ci_low <= row.diff <= row.ci_high
    assert compare(x, y, n_boot=500, rng=7) == row
    with pytest.raises(ValueError, match='shape'):
        compare(x, y[:, :3])


# -- p-values without a Monte-Carlo floor -----------------------------------------------------------

@pytest.mark.parametrize('d', [
    [1 / 3, 2 / 3, -1 / 3, 1.0, 1 / 3, -2 / 3, 2 / 3, 1 / 3, 1.0, -1.0, 1 / 3, 2 / 3, 1.0, 1 / 3],  # 3 seeds of 0/1
    [k / 26 for k in (3, -1, 5, 2, 2, -4, 7, 1, 3, -2, 6, 1, 2, 4)],  # fractions of 26 letter probes
])
def test_lattice_sign_flip_matches_enumeration(d):
    # exact_max=0 skips the enumeration inside the test, so the convolution answers; itertools
    # enumerates all 2^14 sign vectors here.
    assert sign_flip_test(d, exact_max=0) == (pytest.approx(enumerated_sign_flip_p(d), rel=1e-9), 'exact')


def test_float_noise_around_zero_is_a_zero_difference_on_the_lattice():
    # Scores equal up to rounding (e.g. two runs' means of the same values summed in another order)
    # differ by ~1e-12: inside the lattice's tolerance they are zeros and drop out like exact zeros.
    d = [k / 26 for k in (3, -1, 5, 2, 2, -4, 7, 1, 3, -2, 6, 1, 2, 4)]
    noisy = d + [1e-12, -3e-13, 2e-12]
    assert sign_flip_test(noisy, exact_max=0) == (pytest.approx(enumerated_sign_flip_p(d), rel=1e-9), 'exact')


def test_lattice_sign_flip_is_mcnemar_at_any_size():
    # One seed of 0/1 data with 130 + 90 discordant items: the convolution is the binomial test.
    x, y = outcomes(130, 90, both_right=500, both_wrong=300)
    assert sign_flip_test(x - y) == (pytest.approx(binomtest(130, 220, 0.5).pvalue, rel=1e-9), 'exact')


def test_normal_approximation_against_monte_carlo_and_conservative():
    # 400 real-valued, skewed differences with a shift (m_eff ~ 140 >= 100), one draw with p in
    # Holm's range at m ~ 400 (~1e-4), one at ~3e-3. 400,000 random sign vectors estimate p with
    # relative SE sqrt((1 - p) / (p 400000)): 14% at 1.3e-4, 3% at 3e-3. The normal p is within
    # 30% of it and not smaller than it by more than 3 SE (it errs on the conservative side).
    gen = np.random.default_rng(11)
    for shift in (0.21, 0.22):
        d = gen.gamma(2.0, 0.5, size=400) * gen.choice([-1, 1], size=400) + shift
        squares = d ** 2
        assert squares.sum() ** 2 / (squares ** 2).sum() >= 100
        p_normal, method = sign_flip_test(d)
        reached = sum(np.count_nonzero(np.abs((1 - 2 * gen.integers(0, 2, size=(50_000, 400))) @ d) >= abs(d.sum()))
                      for _ in range(8))
        p_mc = (reached + 1) / 400_001
        assert method == 'normal' and 5e-5 <= p_mc <= 0.05, p_mc
        assert p_normal == pytest.approx(p_mc, rel=0.3)
        assert p_normal >= p_mc * (1 - 3 * math.sqrt((1 - p_mc) / (p_mc * 400_000)))


def test_large_samples_have_no_monte_carlo_floor():
    # With n_perm=999 a Monte-Carlo p could never go below 1e-3, and Holm over 400 rows would
    # multiply it to 0.4. Exact (lattice) and normal p-values go as low as the data say.
    gen = np.random.default_rng(12)
    p = gen.beta(2, 2, size=2000)
    x, y = bernoulli_runs(np.clip(p + 0.1, 0, 1), 3, gen), bernoulli_runs(p, 3, gen)
    p_acc, test_acc = paired_pvalue(x, y, n_perm=999)
    nll = gen.gamma(2.0, 1.0, size=2000)
    p_nll, test_nll = paired_pvalue(nll - 0.1 + gen.normal(0, 0.5, size=(3, 2000)), nll + gen.normal(0, 0.5, size=(3, 2000)),
                                    n_perm=999)
    assert (test_acc, test_nll) == ('sign_flip exact', 'sign_flip normal')
    assert p_acc < 1e-12 and p_nll < 1e-12
    assert adjust_pvalues([p_acc] + [0.5] * 399)[0] < 1e-9


@pytest.mark.parametrize('kind', ['nll', 'acc1', 'acc3'])
def test_null_calibration_large_samples(kind):
    # 400 null tables of 3,000 items (skewed per-item NLL with 3 seeds: normal approximation;
    # 0/1 with 1 or 3 seeds: exact): rejections at 5% within 2.5-7.5% (~ +-2.3 binomial SE of
    # 1.1%) and at 1% at most 2.5%.
    gen = np.random.default_rng(13)
    pvalues = []
    for _ in range(400):
        if kind == 'nll':
            mean = gen.gamma(2.0, 1.0, size=3000)
            x, y = (mean + gen.gamma(1.0, 0.5, size=(3, 3000)) for _ in range(2))
        else:
            seeds = 1 if kind == 'acc1' else 3
            q = gen.beta(2, 2, size=3000)
            x, y = bernoulli_runs(q, seeds, gen), bernoulli_runs(q, seeds, gen)
        pvalues.append(paired_pvalue(x, y)[0])
    pvalues = np.array(pvalues)
    assert 0.025 <= np.mean(pvalues < 0.05) <= 0.075
    assert np.mean(pvalues < 0.01) <= 0.025


# -- minimum detectable effect ---------------------------------------------------------------------

def test_minimum_detectable_effect_known_answers():
    # hellaswag, 10,042 items, 20% discordant, level 0.05: Connor's McNemar sample size at the
    # returned Delta gives back n; the plain normal figure (z_a + z_b) sqrt(0.2 / n) = 0.0125.
    n, m2 = 10_042, 0.2
    delta = minimum_detectable_effect(m2, n, 0.05)
    z_a, z_b = norm.isf(0.025), norm.ppf(0.8)
    assert (z_a * math.sqrt(m2) + z_b * math.sqrt(m2 - delta ** 2)) ** 2 / delta ** 2 == pytest.approx(n, rel=1e-9)
    assert delta == pytest.approx((z_a + z_b) * math.sqrt(m2 / n), rel=0.01)
    # a stricter level (Holm's first step over 50 rows) needs a larger effect
    assert minimum_detectable_effect(m2, n, 0.05 / 50) == pytest.approx(delta * (norm.isf(0.0005) + z_b) / (z_a + z_b), rel=0.01)
    assert minimum_detectable_effect(m2, 10, 1e-4) == math.inf and math.isnan(minimum_detectable_effect(0.0, n, 0.05))


@pytest.mark.parametrize('seeds, continuous', [(1, False), (3, False), (3, True)])
def test_planted_minimum_detectable_effect_is_found_about_80_percent(seeds, continuous):
    # The MDE at level 0.05 / 40 (Holm's first step over 40 rows) is computed from the second
    # moment of a null pilot table; 300 tables with that effect planted (one row among 39 uniform
    # null p-values, Holm across) find it in 70-90% (80% expected; binomial SE 2.3%).
    gen = np.random.default_rng(21 + seeds + continuous)
    n, level = 1500, 0.05 / 40

    def table(effect):
        if continuous:
            mean = gen.gamma(2.0, 1.0, size=n)
            return mean + effect + gen.normal(0, 0.5, size=(seeds, n)), mean + gen.normal(0, 0.5, size=(seeds, n))
        q = 0.8 * gen.beta(2, 2, size=n) + 0.1
        return bernoulli_runs(q + effect, seeds, gen), bernoulli_runs(q, seeds, gen)

    pilot = compare(*table(0.0), n_boot=10)
    mde = minimum_detectable_effect(pilot.second_moment, n, level)
    found = 0
    for _ in range(300):
        x, y = table(mde)
        p = paired_pvalue(x, y)[0]
        found += adjust_pvalues([p, *gen.random(39)])[0] < 0.05
    assert 0.70 <= found / 300 <= 0.90, (mde, found)


# -- planning ------------------------------------------------------------------------------------

def test_plan_matches_the_stated_figures_and_its_simulation():
    # one seed, 20% and 35% discordance on hellaswag's 10,042 items, unadjusted: 1.3 and 1.7 points
    low, high = (next(r for r in plan_rows(seeds=1, discordance=d) if r.label == 'hellaswag acc') for d in (0.2, 0.35))
    assert (round(100 * low.mde_unadjusted, 1), round(100 * high.mde_unadjusted, 1)) == (1.3, 1.7)
    rows = {r.label: r for r in plan_rows()}  # 8 variants x 3 seeds: 12 headline metrics x 7 comparisons
    assert rows['hellaswag acc'].level == pytest.approx(0.05 / 84)
    assert rows['hellaswag acc'].mde == pytest.approx(minimum_detectable_effect(0.25 / 3, 10042, 0.05 / 84))
    assert rows['charbench subtask acc'].section == 'exploratory' and rows['charbench subtask acc'].items == 300
    # the planted MDE is found in 70-90% of 150 simulated tables (80% expected, SE 3.3%)
    simulation = load_script('power_simulation')
    gen = np.random.default_rng(7)
    for label in ('winogrande acc', 'recovery logp_marginal'):
        assert 0.70 <= simulation.detection_rate(rows[label], 3, 0.05, 150, gen) <= 0.90, label


def test_planned_validation_sequences_are_the_production_val_split():
    from omegaconf import OmegaConf as om

    from prefix_composer.analysis.power import VALIDATION_SEQUENCES
    for base in sorted((Path(__file__).resolve().parent.parent / 'yamls' / 'base').glob('*.yaml')):
        cfg = om.load(base)
        assert cfg.eval_subset_num_batches == -1, base  # the whole split is evaluated
        assert VALIDATION_SEQUENCES == cfg.variables.data.val_tokens // cfg.variables.max_seq_len, base


def test_plan_power_cli_prints_the_table(capsys):
    assert load_script('plan_power').main(['--seeds', '2', '--variants', '3', '--tasks', 'piqa=1838']) == 0
    out = capsys.readouterr().out
    assert out.startswith('3 variants x 2 seeds, alpha 0.05, 80% power')
    assert '| piqa acc | headline | 1,838 | discordance 0.25 |' in out and 'hellaswag' not in out
