"""integrated_gradients, smoothgrad, occlusion (captum) and kernel_shap (shap) against independent checks."""

import numpy as np
import pytest
import torch

import cafe_bench.attributors.captum_methods  # noqa: F401  (registers the captum methods)
import cafe_bench.attributors.gradient  # noqa: F401
import cafe_bench.attributors.kernel_shap  # noqa: F401
from cafe_bench.attributors.captum_methods import integrated_gradients
from cafe_bench.attributors.registry import get_attributor

METHODS = ["integrated_gradients", "smoothgrad", "occlusion", "kernel_shap"]


@pytest.fixture(scope="module")
def trio_units(mixed_units):
    """One unit of each layer (1, 3, 5); on the tiny suite the layer-5 unit is silent on its baseline."""
    return [mixed_units[0], mixed_units[3], mixed_units[4]]


@pytest.fixture(scope="module")
def trio(suite, trio_units):
    return suite.target(trio_units, seed=0)


@pytest.fixture(scope="module")
def pair(suite, trio_units):
    """Two units of different layers: the batch the stochastic methods are checked on."""
    return suite.target([trio_units[0], trio_units[2]], seed=0)


@pytest.fixture(scope="module")
def pair_scores(pair):
    return {name: get_attributor(name).scores(pair) for name in METHODS}


def _z(target, images, i):
    with torch.no_grad():
        return target.activations(images, torch.full((len(images),), i, dtype=torch.long)).double()


@pytest.mark.parametrize("name", METHODS)
def test_scores_are_finite_patch_maps(name, pair, pair_scores):
    scores = pair_scores[name]
    assert scores.shape == (len(pair), *pair.grid)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert scores.abs().sum() > 0


@pytest.mark.parametrize("name", METHODS)
def test_cost_is_declared_per_unit(name):
    cost = get_attributor(name).cost(64)
    expected = {
        "integrated_gradients": (32, 32),
        "smoothgrad": (16, 16),
        "occlusion": (65, 0),  # P + 1 on the 8 x 8 grid
        "kernel_shap": (258, 0),  # n_samples + the baseline image + the image
    }[name]
    assert (cost.forward, cost.backward) == expected


# integrated gradients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ig_with_delta(trio):
    attr, delta = integrated_gradients(trio, return_convergence_delta=True)
    return attr.detach().double(), delta.detach().double()


def test_integrated_gradients_completeness_up_to_captums_delta(trio, ig_with_delta):
    attr, delta = ig_with_delta
    with torch.no_grad():
        dz = (trio.forward(trio.images) - trio.forward(trio.baseline)).double()
    total = attr.sum(dim=(1, 2, 3))
    # captum's delta is exactly the completeness gap against z_k computed here, unit by unit
    torch.testing.assert_close(total - dz, delta, rtol=0, atol=1e-4)


def test_integrated_gradients_scores_sum_to_the_change_of_z(pair, pair_scores):
    with torch.no_grad():
        z_base = pair.forward(pair.baseline).double()
    dz = pair.clean.double() - z_base
    total = pair_scores["integrated_gradients"].double().sum(dim=(1, 2))
    assert z_base[0] > 0  # the layer-1 unit stays above the threshold on its path: completeness holds
    assert float(total[0]) == pytest.approx(float(dz[0]), rel=1e-3)


def test_integrated_gradients_delta_is_small_where_the_feature_stays_on(trio, ig_with_delta):
    _, delta = ig_with_delta
    with torch.no_grad():
        z_base = trio.forward(trio.baseline).double()
    dz = trio.clean.double() - z_base
    on = (z_base > 0).nonzero().flatten().tolist()
    assert on, "expected a unit whose feature fires on its baseline"
    for i in on:
        assert abs(delta[i]) <= 1e-3 * abs(dz[i]) + 1e-5


def test_integrated_gradients_misses_the_threshold_jump(suite, trio, ig_with_delta):
    """z_k = pre * (pre > threshold) jumps by the threshold; gradients never see the jump."""
    _, delta = ig_with_delta
    with torch.no_grad():
        z_base = trio.forward(trio.baseline)
    off = (z_base == 0).nonzero().flatten().tolist()
    assert off, "expected a unit whose feature is silent on its baseline"
    for i in off:
        threshold = float(suite.saes[trio.units[i].layer].threshold)
        assert float(delta[i]) == pytest.approx(-threshold, rel=0.1)


# occlusion --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def occlusion_scores(trio):
    return get_attributor("occlusion").scores(trio)


def test_occlusion_equals_the_drop_when_one_patch_shows_the_baseline(trio, occlusion_scores):
    gh, gw = trio.grid
    p = trio.patch_size
    for i, unit in enumerate(trio.units):
        for patch in {unit.token, (unit.token + 27) % (gh * gw), gh * gw - 1}:
            r, c = divmod(patch, gw)
            image = trio.images[i].clone()
            image[:, r * p : (r + 1) * p, c * p : (c + 1) * p] = trio.baseline[
                i, :, r * p : (r + 1) * p, c * p : (c + 1) * p
            ]
            expected = float(trio.clean[i] - _z(trio, image[None], i)[0])
            assert float(occlusion_scores[i, r, c]) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_occlusion_does_not_depend_on_perturbations_per_eval(trio, occlusion_scores):
    # 7 does not divide 64: the last pass holds fewer ablations, which captum expands differently
    other = get_attributor("occlusion", perturbations_per_eval=7).scores(trio)
    torch.testing.assert_close(other, occlusion_scores, rtol=1e-4, atol=1e-5)


# kernel SHAP ------------------------------------------------------------------------------------


def test_kernel_shap_efficiency(pair, pair_scores):
    with torch.no_grad():
        dz = (pair.clean - pair.forward(pair.baseline)).double()
    torch.testing.assert_close(pair_scores["kernel_shap"].double().sum(dim=(1, 2)), dz, rtol=1e-4, atol=1e-5)


def test_kernel_shap_is_seeded_by_the_unit_seeds(suite, pair, pair_scores):
    numpy_state = np.random.get_state()
    again = get_attributor("kernel_shap").scores(pair)
    after = np.random.get_state()
    assert torch.equal(again, pair_scores["kernel_shap"])
    assert numpy_state[0] == after[0] and np.array_equal(numpy_state[1], after[1]) and numpy_state[2] == after[2]
    reseeded = get_attributor("kernel_shap").scores(suite.target(pair.units[:1], seed=1))
    assert not torch.equal(reseeded[0], pair_scores["kernel_shap"][0])


# smoothgrad -------------------------------------------------------------------------------------


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone(suite, pair, pair_scores):
    state = torch.get_rng_state()
    again = get_attributor("smoothgrad").scores(pair)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again, pair_scores["smoothgrad"])
    reseeded = get_attributor("smoothgrad").scores(suite.target(pair.units[:1], seed=1))
    assert not torch.equal(reseeded[0], pair_scores["smoothgrad"][0])


def test_smoothgrad_of_a_unit_alone_equals_its_row_in_a_batch(suite, pair, pair_scores):
    alone = get_attributor("smoothgrad").scores(suite.target(pair.units[1:], seed=0))
    torch.testing.assert_close(alone[0], pair_scores["smoothgrad"][1], rtol=1e-5, atol=1e-7)


def test_smoothgrad_without_noise_is_the_absolute_gradient(pair):
    noiseless = get_attributor("smoothgrad", nt_samples=2, stdevs=0.0).scores(pair)
    torch.testing.assert_close(noiseless, get_attributor("gradient").scores(pair), rtol=1e-4, atol=1e-6)
