import numpy as np
import pytest
import torch

from cafe_bench.attributors.registry import get_attributor
from cafe_bench.protocols.engine import (
    compose,
    normalised,
    rank_patches,
    run_curves,
    run_curves_naive,
    step_masks,
)

METHODS = ["activation", "random", "gradient", "grad_x_input"]


def test_ranking_breaks_ties_by_ascending_patch_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert rank_patches(scores).tolist() == [[1, 2, 4, 0, 3]]
    masks = step_masks(scores, np.array([0, 2, 5]))
    assert masks[0].int().tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_compose_takes_whole_patches():
    images = torch.ones(1, 3, 4, 4)
    base = torch.zeros(1, 3, 4, 4)
    taken = torch.tensor([[True, False, False, True]])  # 2x2 grid of 2-pixel patches
    ins = compose(images, base, taken, torch.tensor([0]), "insertion", (2, 2), 2)
    dele = compose(images, base, taken, torch.tensor([0]), "deletion", (2, 2), 2)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(ins[0, 0], expected)
    assert torch.equal(dele[0, 0], 1 - expected)


@pytest.mark.parametrize("protocol", ["insertion", "deletion"])
@pytest.mark.parametrize("method", METHODS)
def test_batched_engine_equals_naive_loop(target, method, protocol):
    scores = get_attributor(method).scores(target)
    naive = run_curves_naive(target, scores, protocol, steps=8)
    with torch.no_grad():
        endpoints = (target.forward(target.baseline), target.clean)
    for batch_size, ends in [(512, endpoints), (5, None)]:  # one pass, and chunks that cut across units
        batched = run_curves(target, scores, protocol, steps=8, batch_size=batch_size, endpoints=ends)
        np.testing.assert_array_equal(batched.fractions, naive.fractions)
        np.testing.assert_allclose(batched.activations, naive.activations, rtol=1e-5, atol=1e-5)


def test_insertion_ends_at_clean_and_deletion_ends_at_baseline(target):
    scores = get_attributor("activation").scores(target)
    with torch.no_grad():
        clean = target.forward(target.images).numpy()
        base = target.forward(target.baseline).numpy()
    ins = run_curves(target, scores, "insertion", steps=16)
    dele = run_curves(target, scores, "deletion", steps=16)
    np.testing.assert_allclose(ins.activations[:, -1], clean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ins.activations[:, 0], base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dele.activations[:, -1], base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dele.activations[:, 0], clean, rtol=1e-5, atol=1e-6)
    norm = normalised(ins, target.clean.numpy())
    np.testing.assert_allclose(norm[:, -1], 1.0, rtol=1e-5)


def test_normalisation_marks_zero_clean_activation_as_nan():
    from cafe_bench.protocols.engine import Curves

    curves = Curves(
        counts=np.array([0, 1]), fractions=np.array([0.0, 1.0]), activations=np.array([[1.0, 2.0], [0.0, 0.0]])
    )
    out = normalised(curves, np.array([2.0, 0.0]))
    assert out[0].tolist() == [0.5, 1.0]
    assert np.isnan(out[1]).all()


def test_step_counts_match_the_curve_length(target):
    curves = run_curves(target, torch.zeros(len(target), *target.grid), "insertion", steps=5)
    assert curves.activations.shape == (len(target), 6)
    assert curves.counts.tolist() == [0, 13, 26, 39, 52, 64]  # ceil(i * 64 / 5), by hand
