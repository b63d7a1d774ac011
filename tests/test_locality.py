import numpy as np
import pytest

from cafe_bench.locality import is_nonlocal, neighbourhood, nonlocality, occlusion_effects, precision_recall


def test_neighbourhood_is_the_chebyshev_block_clipped_at_the_border():
    assert neighbourhood(0, (3, 3)).reshape(3, 3).astype(int).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert neighbourhood(4, (3, 3)).all()
    assert neighbourhood(0, (4, 4), radius=2).sum() == 9


def test_nonlocality_counts_positive_mass_only():
    effects = np.zeros((3, 16))
    effects[0, [0, 1]] = [1.0, 1.0]  # all inside the block of token 0
    effects[1, [0, 15]] = [1.0, 3.0]  # patch 15 is far from token 0
    effects[1, 10] = -5.0  # a negative effect does not count
    scores = nonlocality(effects, [0, 0, 0], (4, 4))
    np.testing.assert_allclose(scores[:2], [0.0, 0.75])
    assert np.isnan(scores[2])
    assert is_nonlocal(scores).tolist() == [False, True, False]
    assert is_nonlocal([0.6], threshold=0.7).tolist() == [False]


def test_occlusion_effects_equal_each_patchs_own_change(additive_target):
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(2, 4, 4))
    images, baseline = rng.random((2, 3, 4, 4)), rng.random((2, 3, 4, 4))
    effects = occlusion_effects(additive_target(weights, images, baseline), batch_size=3)
    delta = (images - baseline).sum(1) * weights  # (2, 4, 4): z(clean) - z(pixel at baseline)
    expected = delta.reshape(2, 2, 2, 2, 2).sum(axis=(2, 4)).reshape(2, 4)
    np.testing.assert_allclose(effects, expected, atol=1e-5)


def test_precision_recall_counts():
    out = precision_recall([True, True, False, False, True], [True, False, True, False, True])
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 1)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert np.isnan(precision_recall([False], [False])["precision"])
