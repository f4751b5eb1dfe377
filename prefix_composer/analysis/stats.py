"""Paired comparison of a variant against the ``ce`` baseline on the same evaluation items.

For one task metric the variant and the baseline give ``x[k, i]`` and ``y[k, i]``: seed replica
``k = 1..S`` (replica k of the variant paired with replica k of ce), item ``i = 1..n`` (same items,
same order); values are 0/1 correctness or a real number such as per-item NLL. With
``d[k, i] = x[k, i] - y[k, i]``:

* effect: ``D = mean_{k,i} d[k, i]``;
* interval: percentile interval of ``D*`` over a two-level paired bootstrap -- ``S`` seed indices
  drawn with replacement, then ``n`` item indices drawn with replacement, applied to ``d`` (so x
  and y keep their pairing) -- which carries both item-sampling and seed-to-seed variance;
* p-value, two-sided, item-level: with one seed and 0/1 outcomes the exact McNemar test (binomial
  test of ``b = #(x=1, y=0)`` out of ``b + c`` discordant items at 1/2); otherwise the sign-flip
  permutation test on the per-item differences ``d_i = mean_k d[k, i]`` (under H0 each ``d_i`` is
  symmetric about 0, so every sign vector ``s`` in {-1, +1}^n is equally likely and
  ``p = P_s(|sum_i s_i d_i| >= |sum_i d_i|)``), exact or by its normal approximation where valid,
  Monte Carlo only for few, dominant differences (``sign_flip_test``). For 0/1 data with one seed
  the two tests coincide.
  The p-value is conditional on the trained runs: it asks whether these checkpoints differ on the
  population of items, not whether a fresh seed would (with 2-3 seeds no seed-level test has any
  power; the bootstrap interval is where seed variance shows);
* multiplicity: Holm step-down (family-wise error) or Benjamini-Hochberg (false discovery rate);
* power: the minimum detectable effect at a level (``minimum_detectable_effect``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
from scipy import signal, stats

# Random draws are made in blocks of about this many numbers to bound memory.
_BLOCK_ELEMENTS = 2_000_000

# Sign-flip statistics within this fraction of sum_i |d_i| of the observed one count as ties
# (sums of the same numbers in another order differ by rounding only).
_TIE_RTOL = 1e-12

# sign_flip_test: differences on a lattice k / q (q <= this) are tested exactly by convolution when
# sum_i |d_i| q <= LATTICE_MAX_SPAN; others by the normal approximation when the effective number
# of differences (sum d^2)^2 / sum d^4 >= NORMAL_MIN_EFFECTIVE.
LATTICE_MAX_DENOMINATOR = 256
LATTICE_MAX_SPAN = 400_000
NORMAL_MIN_EFFECTIVE = 100


def _paired_differences(x, y) -> np.ndarray:
    """``x - y`` as a float [seed, item] array (a 1-D input is one seed); shapes must match."""
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    if x.shape != y.shape or x.ndim != 2 or 0 in x.shape:
        raise ValueError(f'Expected two non-empty [seed, item] arrays of one shape, got {x.shape} and {y.shape}.')
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError('Per-item values must be finite.')
    return x - y


def _is_binary(a) -> bool:
    return bool(np.isin(a, (0, 1)).all())


def paired_difference(x, y) -> float:
    """``D = (1 / (S n)) sum_{k,i} (x[k, i] - y[k, i])``."""
    return float(_paired_differences(x, y).mean())


def paired_bootstrap_ci(x, y, n_boot: int = 10_000, confidence: float = 0.95,
                        rng: int | np.random.Generator = 0) -> tuple[float, float]:
    """Percentile interval ``(q_{a/2}, q_{1-a/2})``, ``a = 1 - confidence``, of the bootstrap
    distribution of ``D* = (1 / (S n)) sum_{k,i} d[s*_k, i*_i]``, with ``s*`` ``S`` seed indices
    and ``i*`` ``n`` item indices drawn uniformly with replacement, independently per replicate.
    With one seed this is the ordinary paired item bootstrap. Seed-by-item noise enters twice
    (in the drawn seeds' means and in the drawn items), so its share of ``Var(D*)`` is about
    ``(3S - 2) / S`` times its share of ``Var(D)`` (2 with two seeds): conservative where runs
    differ only by such noise; item and seed main effects are carried once. ``rng``: seed or
    Generator."""
    d = _paired_differences(x, y)
    n_seeds, n_items = d.shape
    gen = np.random.default_rng(rng)
    means = np.empty(n_boot)
    block = max(1, _BLOCK_ELEMENTS // n_items)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        seed_weights = gen.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=b) / n_seeds
        items = gen.integers(0, n_items, size=(b, n_items))
        per_item = seed_weights @ d  # [b, n]: item i's difference averaged over the drawn seeds
        means[start:start + b] = np.take_along_axis(per_item, items, axis=1).mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _lattice_denominator(d: np.ndarray) -> Optional[int]:
    """The smallest ``q <= LATTICE_MAX_DENOMINATOR`` with every ``q d_i`` an integer (0/1 metrics
    averaged over S seeds: q = S; a fraction of 26 letter probes: q = 26 S), else None."""
    for q in range(1, LATTICE_MAX_DENOMINATOR + 1):
        scaled = d * q
        if np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6):
            return q
    return None


def _lattice_tail(magnitudes: np.ndarray, observed: int) -> float:
    """Exact ``P_s(|sum_i s_i a_i| >= observed)`` for integer magnitudes ``a_i > 0``: with
    ``B_v ~ Bin(n_v, 1/2)`` the number of plus signs among the ``n_v`` items of magnitude ``v``,
    ``sum_i s_i a_i = 2 U - A``, ``U = sum_v v B_v``, ``A = sum_i a_i``; the distribution of ``U``
    is the convolution of the binomials placed on multiples of ``v``."""
    values, counts = np.unique(magnitudes, return_counts=True)
    pmf = np.ones(1)
    for v, n in zip(values.tolist(), counts.tolist()):
        placed = np.zeros(v * n + 1)
        placed[::v] = stats.binom.pmf(np.arange(n + 1), n, 0.5)
        pmf = signal.convolve(pmf, placed)
    statistic = np.abs(2 * np.arange(pmf.size) - int(magnitudes.sum()))
    return float(min(1.0, np.clip(pmf, 0, None)[statistic >= observed].sum()))


def sign_flip_test(d, n_perm: int = 10_000, rng: int | np.random.Generator = 0,
                   exact_max: int = 20) -> tuple[float, str]:
    """``(p, method)`` of the two-sided paired sign-flip test: ``p = P_s(|sum_i s_i d_i| >=
    |sum_i d_i|)`` with ``s`` uniform on {-1, +1}^n (H0: each ``d_i`` symmetric about 0). Zero
    differences are dropped first (their sign changes no sum, so they scale both counts by the same
    power of 2); with ``m`` non-zero differences left:

    * ``'exact'``: ``m <= exact_max``, the share of all ``2^m`` sign vectors; or the differences
      lie on a lattice ``k / q`` (0/1 metrics averaged over seeds, fractions of 26 letter probes)
      spanning at most ``LATTICE_MAX_SPAN`` steps, the exact distribution by convolution of
      binomials (one seed of 0/1 data: the exact McNemar test);
    * ``'normal'``: the normal approximation ``p = 2 Phi(-|sum_i d_i| / sqrt(sum_i d_i^2))``
      (the sign-flip statistic has mean 0 and variance ``sum_i d_i^2`` given the ``|d_i|``).
      Valid when no few differences dominate: it is used only when the effective number of
      differences ``m_eff = (sum_i d_i^2)^2 / sum_i d_i^4 >= NORMAL_MIN_EFFECTIVE`` (= 100).
      The statistic is symmetric (no skewness term) with excess kurtosis ``-2 / m_eff``, so the
      first Edgeworth correction to the tail, ``-(2 / m_eff) z^4 / 24``-relative, makes the true
      tail lighter: the normal p errs on the conservative side, by at most ~20% of p for
      ``|z| <= 4`` (p >= 6e-5) at ``m_eff = 100`` and less beyond (checked against exact and
      Monte-Carlo answers in tests/test_stats.py);
    * ``'monte_carlo'``: otherwise, ``p = (b + 1) / (n_perm + 1)``, ``b`` the number of ``n_perm``
      random sign vectors that reach the observed statistic (counting the observed one keeps the
      test valid; p is never below ``1 / (n_perm + 1)``, which only few, dominant differences need).
    """
    d = np.asarray(d, dtype=float).ravel()
    d = d[d != 0]
    if d.size == 0:
        return 1.0, 'exact'
    observed = abs(d.sum()) - _TIE_RTOL * np.abs(d).sum()
    if d.size <= exact_max:
        sums = np.zeros(1)
        for value in d:  # all 2^m signed sums, doubling once per difference
            sums = np.concatenate([sums + value, sums - value])
        return float(np.mean(np.abs(sums) >= observed)), 'exact'
    q = _lattice_denominator(d)
    if q is not None and np.abs(d).sum() * q <= LATTICE_MAX_SPAN:
        scaled = np.round(d * q).astype(np.int64)
        scaled = scaled[scaled != 0]  # within the lattice's tolerance of 0 (float noise): zero, dropped as above
        magnitudes = np.abs(scaled)
        signed_total = abs(int(scaled.sum()))
        return _lattice_tail(magnitudes, signed_total), 'exact'
    squares = d ** 2
    if squares.sum() ** 2 / (squares ** 2).sum() >= NORMAL_MIN_EFFECTIVE:
        return float(2 * stats.norm.sf(abs(d.sum()) / np.sqrt(squares.sum()))), 'normal'
    gen = np.random.default_rng(rng)
    reached = 0
    block = max(1, _BLOCK_ELEMENTS // d.size)
    for start in range(0, n_perm, block):
        signs = 1 - 2 * gen.integers(0, 2, size=(min(block, n_perm - start), d.size))
        reached += int(np.count_nonzero(np.abs(signs @ d) >= observed))
    return (reached + 1) / (n_perm + 1), 'monte_carlo'


def sign_flip_pvalue(d, n_perm: int = 10_000, rng: int | np.random.Generator = 0,
                     exact_max: int = 20) -> float:
    """The ``p`` of ``sign_flip_test``."""
    return sign_flip_test(d, n_perm=n_perm, rng=rng, exact_max=exact_max)[0]


def mcnemar_exact_pvalue(x01, y01) -> float:
    """Exact two-sided McNemar test for one run pair: ``b = #(x=1, y=0)``, ``c = #(x=0, y=1)``,
    ``p = binomtest(b, b + c, 1/2)`` (= ``min(1, 2 P(Bin(b + c, 1/2) <= min(b, c)))``; 1 with no
    discordant item). One seed only, as 1-D arrays: pooling the discordant pairs of several seeds
    would treat one item's replicas as independent items, so multi-seed 0/1 data goes to
    ``sign_flip_pvalue`` on the seed-averaged differences instead (see ``paired_pvalue``)."""
    x01, y01 = np.asarray(x01), np.asarray(y01)
    if x01.ndim != 1 or x01.shape != y01.shape:
        raise ValueError(f'Expected two 1-D arrays of one shape (one seed), got {x01.shape} and {y01.shape}.')
    if not (_is_binary(x01) and _is_binary(y01)):
        raise ValueError('McNemar needs 0/1 outcomes.')
    b = int(np.count_nonzero((x01 == 1) & (y01 == 0)))
    c = int(np.count_nonzero((x01 == 0) & (y01 == 1)))
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def paired_pvalue(x, y, n_perm: int = 10_000, rng: int | np.random.Generator = 0,
                  exact_max: int = 20) -> tuple[float, str]:
    """``(p, test)``: exact McNemar (``'mcnemar'``) when there is one seed and both arrays are
    0/1; otherwise the sign-flip test on ``d_i = mean_k (x[k, i] - y[k, i])``, ``test`` naming
    how its p was computed (``'sign_flip exact'``, ``'sign_flip normal'``, ``'sign_flip monte_carlo'``)."""
    d = _paired_differences(x, y)
    if d.shape[0] == 1 and _is_binary(x) and _is_binary(y):
        return mcnemar_exact_pvalue(np.ravel(x), np.ravel(y)), 'mcnemar'
    p, method = sign_flip_test(d.mean(axis=0), n_perm=n_perm, rng=rng, exact_max=exact_max)
    return p, f'sign_flip {method}'


def adjust_pvalues(p, method: str = 'holm') -> np.ndarray:
    """Adjusted p-values over the ``m`` non-NaN entries (NaN stays NaN, not counted in ``m``).
    ``'holm'``: with ``p_(1) <= ... <= p_(m)``, ``p~_(j) = max_{l <= j} min(1, (m - l + 1) p_(l))``.
    ``'bh'``: Benjamini-Hochberg, ``p~_(j) = min_{l >= j} min(1, m p_(l) / l)``
    (``scipy.stats.false_discovery_control``)."""
    p = np.asarray(p, dtype=float)
    valid = ~np.isnan(p)
    q = p[valid]
    if ((q < 0) | (q > 1)).any():
        raise ValueError('p-values must lie in [0, 1].')
    out = np.full(p.shape, np.nan)
    if method == 'holm':
        order = np.argsort(q)
        factors = np.arange(q.size, 0, -1)  # m, m-1, ..., 1
        adjusted = np.empty_like(q)
        adjusted[order] = np.minimum(1, np.maximum.accumulate(factors * q[order]))
    elif method == 'bh':
        adjusted = stats.false_discovery_control(q, method='bh')
    else:
        raise ValueError(f"Unknown method {method!r}; expected 'holm' or 'bh'.")
    out[valid] = adjusted
    return out


def mean_sd_over_seeds(x) -> tuple[float, float]:
    """Per-seed means ``m_k = mean_i x[k, i]``; returns ``(mean_k m_k, sd_k m_k)`` with the sample
    sd (ddof=1), NaN with one seed."""
    seed_means = np.atleast_2d(np.asarray(x, dtype=float)).mean(axis=1)
    sd = float(seed_means.std(ddof=1)) if seed_means.size > 1 else float('nan')
    return float(seed_means.mean()), sd


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One variant-vs-baseline row: ``diff`` = mean(x - y), its bootstrap interval, the
    unadjusted two-sided p-value and the test that gave it."""

    diff: float
    ci_low: float
    ci_high: float
    p: float
    test: str
    n_items: int
    n_seeds: int
    second_moment: float  # mean_i d_i^2 of the seed-averaged item differences (see minimum_detectable_effect)


def compare(x, y, n_boot: int = 10_000, confidence: float = 0.95, n_perm: int = 10_000,
            exact_max: int = 20, rng: int | np.random.Generator = 0) -> Comparison:
    """``paired_difference``, ``paired_bootstrap_ci`` and ``paired_pvalue`` of ``x`` against
    ``y`` (both [seed, item]), drawing from one Generator made from ``rng``, and ``mean_i d_i^2``
    of the seed-averaged differences for ``minimum_detectable_effect``. Adjust the ``p`` of a whole
    table with ``adjust_pvalues``."""
    d = _paired_differences(x, y)
    gen = np.random.default_rng(rng)
    low, high = paired_bootstrap_ci(x, y, n_boot=n_boot, confidence=confidence, rng=gen)
    p, test = paired_pvalue(x, y, n_perm=n_perm, rng=gen, exact_max=exact_max)
    return Comparison(diff=float(d.mean()), ci_low=low, ci_high=high, p=p, test=test,
                      n_items=d.shape[1], n_seeds=d.shape[0], second_moment=float(np.mean(d.mean(axis=0) ** 2)))


def minimum_detectable_effect(second_moment: float, n_items: int, level: float, power: float = 0.8) -> float:
    """Smallest true mean difference ``Delta`` that the two-sided paired test at ``level`` detects
    with probability ``power``, from ``M2 = E d_i^2`` of the (seed-averaged) item differences,
    held fixed: for 0/1 outcomes of one seed ``M2`` is the discordant share (McNemar), for several
    seeds or real values the observed second moment. The test statistic ``sum_i d_i`` has variance
    ``n M2`` under H0 (the sign-flip/McNemar null) and ``n (M2 - Delta^2)`` under the alternative,
    so ``sqrt(n) Delta = z_a sqrt(M2) + z_b sqrt(M2 - Delta^2)`` with ``z_a = Phi^-1(1 - level/2)``,
    ``z_b = Phi^-1(power)`` (Connor's McNemar sample size, solved for ``Delta``):
    ``Delta = sqrt(M2) (sqrt(n) z_a + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)``; ``inf`` when
    ``n < z_a^2 - z_b^2`` (no effect is detectable), NaN when ``M2`` is 0 or NaN."""
    z_a, z_b = stats.norm.isf(level / 2), stats.norm.ppf(power)
    if not second_moment > 0:
        return float('nan')
    if n_items < z_a ** 2 - z_b ** 2:
        return float('inf')
    return float(math.sqrt(second_moment) * (math.sqrt(n_items) * z_a + z_b * math.sqrt(n_items - z_a ** 2 + z_b ** 2))
                 / (n_items + z_b ** 2))
