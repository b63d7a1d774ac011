import numpy as np
import pytest

from cafe_bench.protocols.engine import step_counts
from cafe_bench.stats import auc, clustered_bootstrap_ci


def test_auc_of_hand_computed_curves():
    # a step that reaches 1 at the first quarter: 0.5*(0+1)*0.25 + 0.75*1
    assert auc([0, 0.25, 0.5, 0.75, 1.0], [0, 1, 1, 1, 1]) == pytest.approx(0.875)
    # uneven fractions from ceil(i*P/S) with P=10, S=4: 0.09 + 0.16 + 0.3 + 0.2
    assert auc([0, 0.3, 0.5, 0.8, 1.0], [0, 0.6, 1, 1, 1]) == pytest.approx(0.75)
    # a flat curve has its height as area; a linear ramp has half
    assert auc(np.linspace(0, 1, 17), np.full(17, 0.4)) == pytest.approx(0.4)
    assert auc(np.linspace(0, 1, 17), np.linspace(0, 1, 17)) == pytest.approx(0.5)


def test_step_counts_are_ceil_of_i_p_over_s():
    assert step_counts(10, 4).tolist() == [0, 3, 5, 8, 10]
    assert step_counts(64, 16).tolist() == list(range(0, 65, 4))
    assert step_counts(7, 3).tolist() == [0, 3, 5, 7]
    with pytest.raises(ValueError):
        step_counts(10, 0)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(8), 4)
    values = rng.normal(0.5, 0.1, size=32) + np.repeat(rng.normal(0, 0.1, size=8), 4)
    a = clustered_bootstrap_ci(values, clusters, n_resamples=500, seed=3)
    b = clustered_bootstrap_ci(values, clusters, n_resamples=500, seed=3)
    assert a == b
    mean, low, high = a
    assert mean == pytest.approx(values.mean())
    assert low < mean < high


def test_bootstrap_ci_of_constant_values_is_degenerate():
    mean, low, high = clustered_bootstrap_ci(np.full(12, 0.7), np.repeat(np.arange(3), 4), n_resamples=100)
    assert mean == pytest.approx(0.7) and low == pytest.approx(0.7) and high == pytest.approx(0.7)


def test_bootstrap_ci_widens_with_between_cluster_spread():
    clusters = np.repeat(np.arange(6), 5)
    tight = np.repeat([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], 5) + np.tile(np.linspace(-0.1, 0.1, 5), 6)
    spread = np.repeat([0.1, 0.3, 0.5, 0.5, 0.7, 0.9], 5) + np.tile(np.linspace(-0.1, 0.1, 5), 6)
    _, lo_t, hi_t = clustered_bootstrap_ci(tight, clusters, n_resamples=400)
    _, lo_s, hi_s = clustered_bootstrap_ci(spread, clusters, n_resamples=400)
    assert hi_s - lo_s > 3 * (hi_t - lo_t)


def test_bootstrap_means_of_aligned_columns_share_their_draws():
    from cafe_bench.stats import clustered_bootstrap_means

    rng = np.random.default_rng(3)
    a = rng.normal(size=40)
    clusters = np.repeat(np.arange(10), 4)
    reps = clustered_bootstrap_means(np.column_stack([a, a + 1.0, 2 * a, np.full(40, 7.0)]), clusters, 200, seed=4)
    np.testing.assert_allclose(reps[:, 1] - reps[:, 0], 1.0)
    np.testing.assert_allclose(reps[:, 2], 2 * reps[:, 0])
    np.testing.assert_allclose(reps[:, 3], 7.0)
    assert reps[:, 0].std() > 0.05  # the draws do resample


def test_normalised_ci_is_a_ratio_of_means_with_a_covering_interval():
    from cafe_bench.stats import normalised_ci

    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(12), 3)
    random_ = rng.normal(0.5, 0.05, 36)
    oracle = random_ + 0.4 + rng.normal(0, 0.02, 36)
    method = random_ + 0.1 + rng.normal(0, 0.02, 36)
    est, low, high = normalised_ci(method, random_, oracle, clusters, n_resamples=500)
    expected = (method.mean() - random_.mean()) / (oracle.mean() - random_.mean())
    assert est == pytest.approx(expected)
    assert low < est < high and 0.15 < low and high < 0.35
