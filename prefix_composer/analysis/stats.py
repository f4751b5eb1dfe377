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
  ``p = P_s(|sum_i s_i d_i| >= |sum_i d_i|)``). For 0/1 data with one seed the two tests coincide.
  The p-value is conditional on the trained runs: it asks whether these checkpoints differ on the
  population of items, not whether a fresh seed would (with 2-3 seeds no seed-level test has any
  power; the bootstrap interval is where seed variance shows);
* multiplicity: Holm step-down (family-wise error) or Benjamini-Hochberg (false discovery rate)
  across the whole table of comparisons.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

# Random draws are made in blocks of about this many numbers to bound memory.
_BLOCK_ELEMENTS = 2_000_000

# Sign-flip statistics within this fraction of sum_i |d_i| of the observed one count as ties
# (sums of the same numbers in another order differ by rounding only).
_TIE_RTOL = 1e-12


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


def sign_flip_pvalue(d, n_perm: int = 10_000, rng: int | np.random.Generator = 0,
                     exact_max: int = 20) -> float:
    """Two-sided paired sign-flip test: ``p = P_s(|sum_i s_i d_i| >= |sum_i d_i|)`` with
    ``s`` uniform on {-1, +1}^n. Zero differences are dropped first (their sign changes no sum,
    so they scale both counts by the same power of 2). With ``m <= exact_max`` non-zero
    differences ``p`` is the exact share of the ``2^m`` sign vectors; otherwise ``p = (b + 1) /
    (n_perm + 1)``, ``b`` the number of ``n_perm`` random sign vectors that reach the observed
    statistic (counting the observed one keeps the test valid)."""
    d = np.asarray(d, dtype=float).ravel()
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum()) - _TIE_RTOL * np.abs(d).sum()
    if d.size <= exact_max:
        sums = np.zeros(1)
        for value in d:  # all 2^m signed sums, doubling once per difference
            sums = np.concatenate([sums + value, sums - value])
        return float(np.mean(np.abs(sums) >= observed))
    gen = np.random.default_rng(rng)
    reached = 0
    block = max(1, _BLOCK_ELEMENTS // d.size)
    for start in range(0, n_perm, block):
        signs = 1 - 2 * gen.integers(0, 2, size=(min(block, n_perm - start), d.size))
        reached += int(np.count_nonzero(np.abs(signs @ d) >= observed))
    return (reached + 1) / (n_perm + 1)


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
    0/1; otherwise the sign-flip test (``'sign_flip'``) on ``d_i = mean_k (x[k, i] - y[k, i])``."""
    d = _paired_differences(x, y)
    if d.shape[0] == 1 and _is_binary(x) and _is_binary(y):
        return mcnemar_exact_pvalue(np.ravel(x), np.ravel(y)), 'mcnemar'
    return sign_flip_pvalue(d.mean(axis=0), n_perm=n_perm, rng=rng, exact_max=exact_max), 'sign_flip'


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


def compare(x, y, n_boot: int = 10_000, confidence: float = 0.95, n_perm: int = 10_000,
            exact_max: int = 20, rng: int | np.random.Generator = 0) -> Comparison:
    """``paired_difference``, ``paired_bootstrap_ci`` and ``paired_pvalue`` of ``x`` against
    ``y`` (both [seed, item]), drawing from one Generator made from ``rng``. Adjust the ``p`` of
    a whole table with ``adjust_pvalues``."""
    d = _paired_differences(x, y)
    gen = np.random.default_rng(rng)
    low, high = paired_bootstrap_ci(x, y, n_boot=n_boot, confidence=confidence, rng=gen)
    p, test = paired_pvalue(x, y, n_perm=n_perm, rng=gen, exact_max=exact_max)
    return Comparison(diff=float(d.mean()), ci_low=low, ci_high=high, p=p, test=test,
                      n_items=d.shape[1], n_seeds=d.shape[0])
