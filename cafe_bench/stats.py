"""AUC of a curve, clustered bootstrap confidence intervals, paired method comparisons and Holm adjustment."""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid
from scipy.stats import norm

CI_METHODS = ("percentile", "bca")

# resampled unit draws held in memory at once; larger jobs run in chunks of resamples
_DRAWS_PER_CHUNK = 2_000_000


def auc(fractions, curve) -> float:
    """Area under ``curve`` over ``fractions`` (trapezoid rule, both ends included).

    >>> auc([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    0.75
    """
    return float(trapezoid(np.asarray(curve, dtype=np.float64), np.asarray(fractions, dtype=np.float64)))


def _check_args(n_resamples: int, level: float, method: str) -> None:
    if method not in CI_METHODS:
        raise ValueError(f"unknown CI method {method!r}; valid choices: {', '.join(map(repr, CI_METHODS))}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def _grouped(values, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values sorted by cluster (clusters in order of first appearance), with cluster starts and sizes."""
    values = np.asarray(values, dtype=np.float64).ravel()
    labels = np.asarray(clusters).ravel()
    if len(labels) != len(values):
        raise ValueError(f"values and clusters differ in length: {len(values)} != {len(labels)}")
    if not len(values):
        return values, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[inverse.ravel()]
    order = np.argsort(rank, kind="stable")
    sizes = np.bincount(rank)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return values[order], starts, sizes


def _two_stage_means(sorted_values, starts, sizes, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` two-stage bootstrap samples (clusters, then units inside each drawn cluster)."""
    centre = sorted_values.mean()
    if np.ptp(sorted_values) == 0:
        return np.full(n_resamples, centre)
    # resample deviations from the mean, which keeps the rounding error of the sums small
    deviations = sorted_values - centre
    rng = np.random.default_rng(seed)
    n_clusters = len(sizes)
    per_chunk = max(1, _DRAWS_PER_CHUNK // max(len(sorted_values), 1))
    out = np.empty(n_resamples)
    for lo in range(0, n_resamples, per_chunk):
        reps = min(per_chunk, n_resamples - lo)
        drawn = rng.integers(n_clusters, size=(reps, n_clusters)).ravel()
        drawn_sizes = sizes[drawn]
        slot = np.repeat(np.arange(drawn.size), drawn_sizes)
        within = np.floor(rng.random(slot.size) * drawn_sizes[slot]).astype(np.int64)
        picked = deviations[starts[drawn][slot] + within]
        sums = np.bincount(slot // n_clusters, weights=picked, minlength=reps)
        counts = drawn_sizes.reshape(reps, n_clusters).sum(axis=1)
        out[lo : lo + reps] = centre + sums / counts
    return out


def _interval(stats, estimate, sorted_values, starts, sizes, level: float, method: str) -> tuple[float, float]:
    alpha = (1 - level) / 2
    probs = np.array([alpha, 1 - alpha])
    if method == "bca" and len(sizes) >= 3:
        below = (np.count_nonzero(stats < estimate) + 0.5 * np.count_nonzero(stats == estimate)) / len(stats)
        if np.ptp(stats) > 1e-12 * (1 + abs(estimate)) and 0 < below < 1:
            z0 = norm.ppf(below)
            # leave-one-cluster-out jackknife of the unit mean
            sums = np.add.reduceat(sorted_values, starts)
            jack = (sorted_values.sum() - sums) / (len(sorted_values) - sizes)
            dev = jack.mean() - jack
            denom = 6.0 * np.sum(dev**2) ** 1.5
            accel = float(np.sum(dev**3) / denom) if denom > 0 else 0.0
            z = z0 + norm.ppf(probs)
            probs = norm.cdf(z0 + z / np.maximum(1 - accel * z, 1e-12))
    low, high = np.quantile(stats, np.clip(probs, 0, 1))
    return float(low), float(high)


def clustered_bootstrap_ci(
    values, clusters, n_resamples: int = 1000, level: float = 0.95, seed: int = 0, method: str = "percentile"
) -> tuple[float, float, float]:
    """Mean of ``values`` and a CI from a two-stage bootstrap.

    Stage one resamples clusters (features) with replacement, stage two resamples the units (images)
    inside each drawn cluster with replacement; the statistic is the mean over all drawn units.

    ``method="percentile"`` takes the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the bootstrap
    means. ``method="bca"`` (bias-corrected and accelerated) shifts those quantiles by the bias correction
    ``z0 = Phi^-1(share of bootstrap means below the sample mean, ties counted half)`` and the acceleration
    ``a = sum(d^3) / (6 * sum(d^2)^1.5)``, where ``d`` are the deviations of the leave-one-cluster-out
    jackknife means from their average. BCa falls back to the percentile interval when there are fewer than
    3 clusters or the bootstrap distribution is degenerate (all means equal, or all on one side of the
    sample mean).

    Args:
        values: per-unit values, e.g. AUCs.
        clusters: per-unit cluster labels (same length).
        n_resamples: bootstrap replicates (default 1000).
        level: confidence level (default 0.95).
        seed: seed of the resampling generator (default 0).
        method: ``"percentile"`` (default) or ``"bca"``.
    Returns:
        (mean, ci_low, ci_high); the CI is (nan, nan) for fewer than two units.
    Raises:
        ValueError: unknown ``method``, ``level`` outside (0, 1), or values and clusters of different lengths.
    """
    _check_args(n_resamples, level, method)
    sorted_values, starts, sizes = _grouped(values, clusters)
    mean = float(sorted_values.mean()) if len(sorted_values) else float("nan")
    if len(sorted_values) < 2:
        return mean, float("nan"), float("nan")
    stats = _two_stage_means(sorted_values, starts, sizes, int(n_resamples), seed)
    low, high = _interval(stats, mean, sorted_values, starts, sizes, level, method)
    return mean, low, high


def paired_difference(
    values_a,
    values_b,
    clusters,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict:
    """Compare two methods scored on the same units: mean of ``a - b``, its clustered CI and a p-value.

    ``values_a[i]`` and ``values_b[i]`` must belong to the same unit, whose cluster is ``clusters[i]``.
    The per-unit differences ``d = a - b`` go through the two-stage bootstrap of
    :func:`clustered_bootstrap_ci` (same seed, same ``method``); the same resamples give the p-value.

    p-value (two-sided, H0: mean difference = 0): a clustered bootstrap test on the null-shifted
    resamples. With ``d_hat`` the observed mean difference and ``d*`` the bootstrap means, the shifted means
    ``s* = d* - d_hat`` approximate the sampling distribution of the mean under H0, and
    ``p = 2 * min(P(s* <= d_hat), P(s* >= d_hat))``, floored at ``1 / (n_resamples + 1)`` (a bootstrap
    cannot resolve smaller values) and capped at 1. It does not depend on ``method``.

    ``prob_improvement`` is the share of units where ``a > b``, ties counting half.

    Returns:
        dict with ``mean_diff, ci_low, ci_high, p_value, prob_improvement, n_units, n_clusters``; the CI and
        p-value are nan for fewer than two units, every float is nan for none.
    Raises:
        ValueError: unknown ``method`` or inputs of different lengths.
    """
    _check_args(n_resamples, level, method)
    a = np.asarray(values_a, dtype=np.float64).ravel()
    b = np.asarray(values_b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"values_a and values_b differ in length: {len(a)} != {len(b)}")
    diff, starts, sizes = _grouped(a - b, clusters)
    n = len(diff)
    out = {
        "mean_diff": float(diff.mean()) if n else float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "p_value": float("nan"),
        "prob_improvement": float(np.mean((a > b) + 0.5 * (a == b))) if n else float("nan"),
        "n_units": n,
        "n_clusters": len(sizes),
    }
    if n < 2:
        return out
    n_resamples = int(n_resamples)
    stats = _two_stage_means(diff, starts, sizes, n_resamples, seed)
    out["ci_low"], out["ci_high"] = _interval(stats, out["mean_diff"], diff, starts, sizes, level, method)
    shifted = stats - out["mean_diff"]
    tail = min(np.count_nonzero(shifted <= out["mean_diff"]), np.count_nonzero(shifted >= out["mean_diff"]))
    out["p_value"] = float(min(1.0, max(2 * tail / n_resamples, 1 / (n_resamples + 1))))
    return out


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: monotone in the raw p-values and capped at 1. Rejecting
    where the adjusted value is at most ``alpha`` controls the family-wise error rate at ``alpha``.

    Raises:
        ValueError: a p-value outside [0, 1] (nan included).
    """
    p = np.asarray(p_values, dtype=np.float64)
    shape = p.shape
    p = p.ravel()
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.reshape(shape)


def clustered_bootstrap_means(columns, clusters, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_resamples, k) bootstrap means of k aligned per-unit value columns ((n, k) array), every column under the
    same two-stage draws of :func:`clustered_bootstrap_ci` (same seed): for statistics of several means of the
    same units, such as ratios."""
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim != 2 or len(columns) < 1:
        raise ValueError(f"columns must be an (n >= 1, k) array, got shape {columns.shape}")
    out = np.empty((int(n_resamples), columns.shape[1]))
    for j in range(columns.shape[1]):
        sorted_values, starts, sizes = _grouped(columns[:, j], clusters)
        out[:, j] = _two_stage_means(sorted_values, starts, sizes, int(n_resamples), seed)
    return out


def normalised_ci(
    method_values, random_values, oracle_values, clusters, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(method) - mean(random)) / (mean(oracle) - mean(random)) over the same units, with a percentile CI
    from the clustered bootstrap (the three means resampled together); NaN where the denominator is 0."""
    columns = np.column_stack([method_values, random_values, oracle_values]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        m, r, o = columns.mean(0)
        estimate = float((m - r) / (o - r))
        if len(columns) < 2:
            return estimate, float("nan"), float("nan")
        reps = clustered_bootstrap_means(columns, clusters, n_resamples, seed)
        ratios = (reps[:, 0] - reps[:, 1]) / (reps[:, 2] - reps[:, 1])
    ratios = ratios[np.isfinite(ratios)]
    if not len(ratios):
        return estimate, float("nan"), float("nan")
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)
