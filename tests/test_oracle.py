import numpy as np
import pytest
import torch

from cafe_bench.oracle import greedy_oracle, oracle_scores
from cafe_bench.protocols.engine import run_curves


def _additive(additive_target, seed=2):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, 4, 4))
    images, baseline = rng.random((3, 3, 4, 4)), rng.random((3, 3, 4, 4))
    target = additive_target(weights, images, baseline)
    gain = ((images - baseline).sum(1) * weights).reshape(3, 2, 2, 2, 2).sum(axis=(2, 4)).reshape(3, 4)
    return target, gain  # gain[u, p]: what inserting patch p adds to z


def test_greedy_insertion_on_an_additive_model_takes_patches_by_gain(additive_target):
    target, gain = _additive(additive_target)
    order, values = greedy_oracle(target, "insertion", batch_size=5)
    np.testing.assert_array_equal(order, np.argsort(-gain, axis=1, kind="stable"))
    z0 = target.forward(target.baseline).numpy()
    np.testing.assert_allclose(
        values, z0[:, None] + np.concatenate([np.zeros((3, 1)), np.cumsum(-np.sort(-gain), 1)], 1), atol=1e-5
    )


def test_greedy_deletion_removes_the_largest_gain_first(additive_target):
    target, gain = _additive(additive_target)
    order, values = greedy_oracle(target, "deletion")
    np.testing.assert_array_equal(order, np.argsort(-gain, axis=1, kind="stable"))
    np.testing.assert_allclose(values[:, 0], target.clean.numpy())
    np.testing.assert_allclose(values[:, -1], target.forward(target.baseline).numpy())


def test_engine_curves_from_oracle_scores_equal_the_oracle_values(additive_target):
    target, _ = _additive(additive_target, seed=5)
    for protocol in ("insertion", "deletion"):
        order, values = greedy_oracle(target, protocol)
        scores = torch.from_numpy(oracle_scores(order)).view(3, 2, 2)
        curves = run_curves(target, scores, protocol, steps=2)
        np.testing.assert_allclose(curves.activations, values[:, curves.counts], atol=1e-5)


def test_no_oracle_for_lerf(additive_target):
    target, _ = _additive(additive_target)
    with pytest.raises(ValueError, match="valid: insertion, deletion"):
        greedy_oracle(target, "insertion_lerf")
