import numpy as np
import pytest
from scipy import stats as sps

import cafe_bench.stats as cs
from cafe_bench.stats import clustered_bootstrap_ci, holm, paired_difference


def _clustered(rng, n_clusters=12, per_cluster=4, sd_cluster=0.5, sd_unit=1.0, mean=0.5):
    clusters = np.repeat(np.arange(n_clusters), per_cluster)
    values = mean + np.repeat(rng.normal(0, sd_cluster, n_clusters), per_cluster)
    return values + rng.normal(0, sd_unit, n_clusters * per_cluster), clusters


def _coverage(n_sets, seed, methods, sd_cluster=0.5, iid=False, n_resamples=1000):
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(methods, 0)
    for i in range(n_sets):
        values, clusters = _clustered(rng, sd_cluster=sd_cluster)
        if iid:  # every unit its own cluster: an ordinary bootstrap that ignores the clustering
            clusters = np.arange(len(values))
        for method in methods:
            _, low, high = clustered_bootstrap_ci(values, clusters, n_resamples=n_resamples, seed=i, method=method)
            hits[method] += low <= 0.5 <= high
    return {m: h / n_sets for m, h in hits.items()}


# --- clustered_bootstrap_ci: resampling -----------------------------------------------------------------------


def test_two_stage_bootstrap_variance_matches_its_closed_form():
    # With G equal clusters of k units, the bootstrap mean averages G independent draws, each the mean of k
    # draws from a uniformly chosen cluster g, so Var* = (mean_g (m_g - m)^2 + mean_g(s2_g) / k) / G with
    # m_g the cluster means and s2_g the within-cluster population variances.
    rng = np.random.default_rng(0)
    values, clusters = _clustered(rng, n_clusters=10, per_cluster=5, sd_cluster=0.3, sd_unit=1.0)
    grid = values.reshape(10, 5)
    expected = (np.mean((grid.mean(1) - values.mean()) ** 2) + np.mean(grid.var(1)) / 5) / 10
    sorted_values, starts, sizes = cs._grouped(values, clusters)
    boot = cs._two_stage_means(sorted_values, starts, sizes, 40_000, seed=1)
    assert boot.mean() == pytest.approx(values.mean(), abs=4 * np.sqrt(expected / 40_000))
    assert boot.var() == pytest.approx(expected, rel=0.04)


def test_interleaved_cluster_labels_give_the_same_interval():
    rng = np.random.default_rng(2)
    values, clusters = _clustered(rng, n_clusters=5, per_cluster=3)
    grouped = clustered_bootstrap_ci(values, clusters, n_resamples=300, seed=4)
    # interleave the units of the clusters; the order inside each cluster and of first appearance is kept
    order = np.arange(15).reshape(5, 3).T.ravel()
    labels = np.array([f"f{c}" for c in clusters])
    assert clustered_bootstrap_ci(values[order], labels[order], n_resamples=300, seed=4) == grouped


def test_chunked_resampling_is_seeded_and_agrees(monkeypatch):
    rng = np.random.default_rng(3)
    values, clusters = _clustered(rng, n_clusters=10, per_cluster=5)
    whole = clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=0)
    monkeypatch.setattr(cs, "_DRAWS_PER_CHUNK", 7 * len(values))  # chunks of 7 resamples, one short at the end
    chunked = clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=0)
    assert chunked == clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=0)
    width = whole[2] - whole[1]
    assert chunked[1] == pytest.approx(whole[1], abs=0.05 * width)
    assert chunked[2] == pytest.approx(whole[2], abs=0.05 * width)


def test_constant_values_give_a_point_interval_that_holds_the_mean():
    for method in ("percentile", "bca"):
        mean, low, high = clustered_bootstrap_ci(np.full(30, 0.1), np.repeat(np.arange(10), 3), method=method)
        assert low <= mean <= high and high - low == 0


# --- clustered_bootstrap_ci: BCa ------------------------------------------------------------------------------


def test_bca_is_seeded_and_close_to_percentile_on_symmetric_data():
    rng = np.random.default_rng(5)
    values, clusters = _clustered(rng, n_clusters=25, per_cluster=4, sd_cluster=0.3, sd_unit=0.3)
    pct = clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=1)
    bca = clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=1, method="bca")
    assert bca == clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=1, method="bca")
    assert bca[0] == pct[0]
    width = pct[2] - pct[1]
    assert abs(bca[1] - pct[1]) < 0.08 * width and abs(bca[2] - pct[2]) < 0.08 * width


def test_bca_shifts_toward_the_long_tail_on_skewed_data():
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(20), 3)
    values = np.exp(rng.normal(0, 1.5, 20)).repeat(3) * np.exp(rng.normal(0, 0.3, 60))  # right-skewed
    assert sps.skew(values) > 1
    _, p_low, p_high = clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=2)
    _, b_low, b_high = clustered_bootstrap_ci(values, clusters, n_resamples=4000, seed=2, method="bca")
    width = p_high - p_low
    assert b_low > p_low and b_high > p_high + 0.05 * width
    # the same data mirrored: the long tail is on the left, so BCa moves the other way
    _, m_low, m_high = clustered_bootstrap_ci(-values, clusters, n_resamples=4000, seed=2, method="bca")
    _, q_low, q_high = clustered_bootstrap_ci(-values, clusters, n_resamples=4000, seed=2)
    assert m_high < q_high and m_low < q_low - 0.05 * width


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_singleton_clusters_match_scipy_bootstrap(method):
    # one unit per cluster makes the two-stage bootstrap an ordinary one; scipy's BCa uses the same
    # leave-one-out jackknife acceleration, so both intervals agree up to Monte Carlo error
    rng = np.random.default_rng(7)
    values = rng.gamma(1.0, 1.0, size=60)
    _, low, high = clustered_bootstrap_ci(values, np.arange(60), n_resamples=40_000, seed=3, method=method)
    ref = sps.bootstrap(
        (values,), np.mean, n_resamples=40_000, method="BCa" if method == "bca" else "percentile", random_state=9
    ).confidence_interval
    width = ref.high - ref.low
    assert low == pytest.approx(ref.low, abs=0.03 * width)
    assert high == pytest.approx(ref.high, abs=0.03 * width)


def test_bca_falls_back_to_percentile_with_two_clusters():
    rng = np.random.default_rng(8)
    values = rng.gamma(0.5, 1.0, size=10)
    clusters = np.repeat([0, 1], 5)
    pct = clustered_bootstrap_ci(values, clusters, n_resamples=500, seed=5)
    assert clustered_bootstrap_ci(values, clusters, n_resamples=500, seed=5, method="bca") == pct


def test_coverage_of_the_95_percent_interval():
    # 12 features x 4 images, feature effects (sd 0.5) plus image noise (sd 1), true mean 0.5
    cov = _coverage(1000, seed=10, methods=("percentile", "bca"))
    assert cov["percentile"] >= 0.93 and cov["bca"] >= 0.93
    # ignoring the clustering gives intervals that are too narrow on the same data
    iid = _coverage(300, seed=10, methods=("percentile",), iid=True)
    assert iid["percentile"] < cov["percentile"] - 0.03
    # feature effects twice the image noise: with 12 clusters the bootstrap is known to run a little short
    # (its variance carries a factor (G - 1) / G and normal rather than t quantiles), so the bound is lower
    strong = _coverage(1000, seed=12, methods=("percentile", "bca"), sd_cluster=2.0)
    assert strong["percentile"] >= 0.89 and strong["bca"] >= 0.89


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="percentile.*bca"):
        clustered_bootstrap_ci([0.1, 0.2, 0.3], [0, 1, 2], method="basic")
    with pytest.raises(ValueError, match="length"):
        clustered_bootstrap_ci([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="level"):
        clustered_bootstrap_ci([0.1, 0.2, 0.3], [0, 1, 2], level=95)


# --- paired_difference ----------------------------------------------------------------------------------------


def test_paired_identical_inputs_show_no_difference():
    rng = np.random.default_rng(20)
    values, clusters = _clustered(rng)
    for method in ("percentile", "bca"):
        out = paired_difference(values, values.copy(), clusters, method=method)
        assert out["mean_diff"] == 0 and out["ci_low"] == 0 and out["ci_high"] == 0
        assert out["p_value"] == 1.0 and out["prob_improvement"] == 0.5
        assert out["n_units"] == 48 and out["n_clusters"] == 12


def test_paired_clear_shift_is_significant():
    rng = np.random.default_rng(21)
    b, clusters = _clustered(rng, sd_cluster=0.1, sd_unit=0.1)
    a = b + 0.2 + rng.normal(0, 0.05, len(b))
    out = paired_difference(a, b, clusters, n_resamples=1000)
    assert out["mean_diff"] == pytest.approx(np.mean(a - b))
    assert out["p_value"] == pytest.approx(1 / 1001)
    assert 0 < out["ci_low"] < out["mean_diff"] < out["ci_high"]
    assert out["prob_improvement"] > 0.95
    assert set(out) == {"mean_diff", "ci_low", "ci_high", "p_value", "prob_improvement", "n_units", "n_clusters"}


def test_paired_swapping_flips_the_sign():
    rng = np.random.default_rng(22)
    b, clusters = _clustered(rng, sd_cluster=0.1, sd_unit=0.1)
    a = b + 0.03 + rng.normal(0, 0.1, len(b))
    ab = paired_difference(a, b, clusters, seed=3)
    ba = paired_difference(b, a, clusters, seed=3)
    assert ba["mean_diff"] == pytest.approx(-ab["mean_diff"])
    assert ba["ci_low"] == pytest.approx(-ab["ci_high"]) and ba["ci_high"] == pytest.approx(-ab["ci_low"])
    assert ba["p_value"] == pytest.approx(ab["p_value"])
    assert ba["prob_improvement"] == pytest.approx(1 - ab["prob_improvement"])


def test_paired_ci_matches_bootstrap_of_differences_and_is_seeded():
    rng = np.random.default_rng(23)
    b, clusters = _clustered(rng)
    a = b + rng.normal(0.1, 0.5, len(b))
    for method in ("percentile", "bca"):
        out = paired_difference(a, b, clusters, n_resamples=700, seed=8, method=method)
        assert out == paired_difference(a, b, clusters, n_resamples=700, seed=8, method=method)
        _, low, high = clustered_bootstrap_ci(a - b, clusters, n_resamples=700, seed=8, method=method)
        assert (out["ci_low"], out["ci_high"]) == pytest.approx((low, high))


def test_prob_improvement_counts_ties_half():
    # a > b on unit 2, a < b on unit 3, ties on units 1 and 4: (0.5 + 1 + 0 + 0.5) / 4
    out = paired_difference([1, 2, 3, 4], [1, 1, 5, 4], [0, 0, 1, 1])
    assert out["prob_improvement"] == pytest.approx(0.5)
    assert out["mean_diff"] == pytest.approx(-0.25)


def test_paired_p_value_is_calibrated_and_tracks_a_t_test():
    # no true difference: at most about 5% of p-values fall below 0.05
    rng = np.random.default_rng(24)
    p_null = []
    for i in range(300):
        b, clusters = _clustered(rng, sd_cluster=0.1, sd_unit=0.1)
        a = b + np.repeat(rng.normal(0, 0.05, 12), 4) + rng.normal(0, 0.1, 48)
        p_null.append(paired_difference(a, b, clusters, n_resamples=500, seed=i)["p_value"])
    assert 0.01 <= np.mean(np.array(p_null) <= 0.05) <= 0.08
    # many clusters: close to a one-sample t-test on the per-cluster mean differences
    b, clusters = _clustered(rng, n_clusters=40, sd_cluster=0.1, sd_unit=0.1)
    a = b + 0.01 + np.repeat(rng.normal(0, 0.05, 40), 4) + rng.normal(0, 0.1, 160)
    p = paired_difference(a, b, clusters, n_resamples=5000)["p_value"]
    t = sps.ttest_1samp(np.bincount(clusters, a - b) / 4, 0).pvalue
    assert 0.02 < t < 0.8 and abs(p - t) < 0.1


def test_paired_invalid_arguments_raise():
    with pytest.raises(ValueError, match="length"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2], [0, 1, 2])
    with pytest.raises(ValueError, match="length"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.4], [0, 1])
    with pytest.raises(ValueError, match="percentile.*bca"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.4], [0, 1, 2], method="studentized")


def test_paired_single_unit_has_no_interval():
    out = paired_difference([0.7], [0.5], [0])
    assert out["mean_diff"] == pytest.approx(0.2) and out["prob_improvement"] == 1.0
    assert np.isnan(out["ci_low"]) and np.isnan(out["ci_high"]) and np.isnan(out["p_value"])


# --- holm -----------------------------------------------------------------------------------------------------


def test_holm_hand_example():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4; ascending 0.005, 0.01, 0.03, 0.04 scaled by 4, 3, 2, 1:
    # 0.02, 0.03, 0.06, 0.04; running max 0.02, 0.03, 0.06, 0.06; back in input order:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # cap: [0.3, 0.5, 0.02] -> 0.02*3 = 0.06, 0.3*2 = 0.6, 0.5*1 = 0.5 -> running max 0.06, 0.6, 0.6
    np.testing.assert_allclose(holm([0.3, 0.5, 0.02]), [0.6, 0.6, 0.06])
    # 0.5*3 = 1.5 -> 1, so everything after is 1 as well
    np.testing.assert_allclose(holm([0.9, 0.5, 0.7]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(holm([0.2]), [0.2])
    assert holm([]).shape == (0,)


def test_holm_properties_and_step_down_rejections():
    # scipy.stats offers no Holm adjustment (false_discovery_control does BH/BY only); check the defining
    # properties and that thresholding at alpha reproduces the step-down procedure
    rng = np.random.default_rng(30)
    for _ in range(50):
        m = int(rng.integers(1, 15))
        p = rng.uniform(0, 0.2, m) ** 2
        p[rng.random(m) < 0.2] = p[0]  # some ties
        adj = holm(p)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adj[order]) >= 0)
        assert np.all(adj >= p) and np.all(adj <= np.minimum(1, m * p) + 1e-15)
        for alpha in (0.01, 0.05, 0.1):
            rejected = np.zeros(m, bool)
            for i, idx in enumerate(order):
                if p[idx] > alpha / (m - i):
                    break
                rejected[idx] = True
            np.testing.assert_array_equal(adj <= alpha, rejected)


def test_holm_rejects_invalid_p_values():
    with pytest.raises(ValueError):
        holm([0.1, 1.2])
    with pytest.raises(ValueError):
        holm([0.1, float("nan")])
