"""AUC of a curve and clustered bootstrap confidence intervals of a mean AUC."""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid


def auc(fractions, curve) -> float:
    """Area under ``curve`` over ``fractions`` (trapezoid rule, both ends included).

    >>> auc([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    0.75
    """
    return float(trapezoid(np.asarray(curve, dtype=np.float64), np.asarray(fractions, dtype=np.float64)))


def clustered_bootstrap_ci(
    values, clusters, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile CI from a two-stage bootstrap.

    Stage one resamples clusters (features) with replacement, stage two resamples the units (images)
    inside each drawn cluster with replacement; the statistic is the mean over all drawn units.

    Args:
        values: per-unit values, e.g. AUCs.
        clusters: per-unit cluster labels (same length).
        n_resamples: bootstrap replicates (default 1000).
        level: confidence level (default 0.95).
        seed: seed of the resampling generator (default 0).
    Returns:
        (mean, ci_low, ci_high); the CI is (nan, nan) for fewer than two units.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    labels = np.asarray(clusters)
    groups = [values[labels == c] for c in dict.fromkeys(labels.tolist())]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        drawn = rng.integers(len(groups), size=len(groups))
        total = count = 0.0
        for g in drawn:
            vals = groups[g]
            total += vals[rng.integers(len(vals), size=len(vals))].sum()
            count += len(vals)
        stats[r] = total / count
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return mean, float(low), float(high)
