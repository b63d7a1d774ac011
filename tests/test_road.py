"""The ``road`` baseline (noisy linear imputation): what it keeps, what it fills, how it is seeded, what it hides."""

import numpy as np
import pytest
import torch

from cafe_bench.errors import RunConfigError
from cafe_bench.protocols.baselines import imputer, list_baselines, make_baseline
from cafe_bench.protocols.engine import run_curves, run_curves_naive
from cafe_bench.protocols.road import noise_seed, road_impute
from cafe_bench.scenes import make_images

P = 8  # patch side of the test masks


def patch_mask(keep_ngg: torch.Tensor) -> torch.Tensor:
    """(N, gh, gw) bool kept patches -> (N, 1, H, W) bool removed pixels."""
    return (~keep_ngg)[:, None].repeat_interleave(P, 2).repeat_interleave(P, 3)


def random_masks(n: int, size: int = 64, seed: int = 0, p_keep: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return patch_mask(torch.rand(n, size // P, size // P, generator=g) < p_keep)


def mid_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Random images in [0.3, 0.7]: noise of std 0.01 is never clipped there, and a fill that sags towards 0 at the
    border leaves the range of the kept pixels."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 3, size, size, generator=g)


def neighbour_average(x_3hw: np.ndarray) -> np.ndarray:
    """ROAD's 8-neighbour average of every pixel (1/6 direct, 1/12 diagonal, renormalised at the border), written
    out with padding, independently of the module's sparse stencil."""
    c, h, w = x_3hw.shape
    xp = np.pad(x_3hw, ((0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((h, w)), 1)
    total, weight = np.zeros_like(x_3hw), np.zeros((h, w))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            wt = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
            total += wt * xp[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            weight += wt * inside[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return total / weight


def test_road_is_registered_with_its_own_imputer():
    assert "road" in list_baselines()
    assert imputer("road") is road_impute


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_known_pixels_are_unchanged_bit_for_bit(dtype):
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    removed = random_masks(4, seed=1)
    out = road_impute(images, removed)
    assert out.dtype == dtype and out.shape == images.shape
    kept = ~removed.expand_as(images)
    assert torch.equal(out[kept], images[kept])
    assert not torch.equal(out[~kept], images[~kept])  # the removed ones did change


def test_a_linear_ramp_is_reproduced_inside_a_removed_square():
    """Linear functions are fixed points of a symmetric neighbour average: the fill must give back the ramp."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = torch.stack([0.2 + 0.004 * xx + 0.003 * yy, 0.9 - 0.005 * xx + 0.002 * yy, 0.5 + 0.002 * xx - 0.004 * yy])
    images = ramp[None].double()
    removed = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    removed[..., 12:44, 20:56] = True
    out = road_impute(images, removed, road_noise=0.0)
    np.testing.assert_allclose(out.numpy(), images.numpy(), atol=1e-5, rtol=0)
    assert not torch.equal(road_impute(images, removed)[removed.expand_as(images)], images[removed.expand_as(images)])


def test_removed_pixels_are_the_road_weighted_average_of_their_neighbours():
    """Noiseless, every removed pixel equals the 1/6-1/12 average of its neighbours (renormalised at the border),
    computed here from the output image itself; known pixels need not."""
    images = mid_images(2, seed=2).double()
    removed = random_masks(2, seed=2)
    removed[:, :, :P, :P] = True  # a removed corner patch: the border renormalisation is exercised
    out = road_impute(images, removed, road_noise=0.0).numpy()
    for i in range(2):
        rem = removed[i, 0].numpy()
        avg = neighbour_average(out[i])
        np.testing.assert_allclose(out[i][:, rem], avg[:, rem], atol=1e-7, rtol=0)
        assert np.abs(out[i][:, ~rem] - avg[:, ~rem]).max() > 1e-2  # the check itself can tell the two apart


def test_noiseless_fill_stays_within_the_range_of_the_kept_pixels():
    """Maximum principle: a weighted average never leaves [min, max] of the known values, also at the border."""
    images = mid_images(4, seed=3)
    removed = random_masks(4, seed=3, p_keep=0.3)
    removed[:, :, :, :P] = True  # a removed column of border patches
    out = road_impute(images, removed, road_noise=0.0)
    for i in range(4):
        rem = removed[i].expand(3, -1, -1)
        known, filled = images[i][~rem], out[i][rem]
        assert filled.min() >= known.min() - 1e-6 and filled.max() <= known.max() + 1e-6


def test_noise_has_std_road_noise_on_imputed_pixels_only():
    images = mid_images(1, seed=4)
    removed = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    removed[..., 8:56, 8:56] = True
    noiseless = road_impute(images, removed, road_noise=0.0)
    for noise in (0.01, 0.03):
        diff = (road_impute(images, removed, road_noise=noise) - noiseless)[removed.expand_as(images)]
        assert abs(float(diff.std()) / noise - 1) < 0.05, float(diff.std())
        assert abs(float(diff.mean())) < 0.1 * noise
    assert torch.equal(road_impute(images, removed), road_impute(images, removed, road_noise=0.01))  # the default


def test_noisy_fill_is_clipped_to_the_unit_range():
    images = torch.ones(1, 3, 32, 32)
    images[..., :, 16:] = 0.0  # white left half, black right half
    removed = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    removed[..., :, :8] = removed[..., :, 24:] = True  # fills of exactly 1 and exactly 0, before noise
    out = road_impute(images, removed, road_noise=0.05)
    assert out.min() >= 0 and out.max() <= 1
    assert (out[..., :8] == 1).float().mean() > 0.3 and (out[..., 24:] == 0).float().mean() > 0.3


def test_fully_removed_image_is_finite_and_near_its_mean_colour():
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    everything = torch.ones(3, 1, 32, 48, dtype=torch.bool)
    mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    exact = road_impute(images, everything, road_noise=0.0)
    assert torch.isfinite(exact).all()
    torch.testing.assert_close(exact, mean, atol=1e-6, rtol=0)
    noisy = road_impute(images, everything)
    assert torch.isfinite(noisy).all() and (noisy - mean).abs().max() < 0.06
    assert 0.008 < float((noisy - mean).std()) < 0.012


def test_one_kept_pixel_fills_the_image_with_its_colour():
    """Almost everything removed: the system is at its worst conditioned short of singular, and its answer is known."""
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6)).double()
    removed = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    removed[..., 5, 7] = False
    out = road_impute(images, removed, road_noise=0.0)
    torch.testing.assert_close(out, images[..., 5:6, 7:8].expand_as(out), atol=1e-6, rtol=0)


def test_baseline_equals_imputing_every_pixel():
    """The engine's endpoint (the baseline image) must be what compose() gives with every patch removed."""
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    everything = torch.ones(3, 1, 64, 64, dtype=torch.bool)
    base = make_baseline("road", images, blur_sigma=4.0)  # other protocol options are ignored
    assert torch.equal(base, imputer("road")(images, everything, torch.zeros_like(images)))
    assert not torch.equal(base, make_baseline("mean", images))  # it is noisy


def test_non_default_noise_is_refused_until_the_engine_passes_options_to_impute():
    with pytest.raises(RunConfigError, match="road_noise"):
        make_baseline("road", torch.rand(1, 3, 16, 16), road_noise=0.05)


def test_noise_depends_on_image_and_mask_not_on_the_batch():
    images, removed = mid_images(4, seed=8), random_masks(4, seed=8)
    alone = road_impute(images[2:3], removed[2:3])
    in_batch = road_impute(images, removed)
    reordered = road_impute(images[[3, 2, 0]], removed[[3, 2, 0]])
    assert torch.equal(in_batch[2], alone[0]) and torch.equal(reordered[1], alone[0])
    # the same image, the bottom-right patch's status flipped: fresh noise where both masks remove
    other = removed[2:3].clone()
    other[..., 56:, 56:] = ~other[..., 56:, 56:]
    both = (removed[2:3] & other).expand(1, 3, -1, -1)
    noise_a = (alone - road_impute(images[2:3], removed[2:3], road_noise=0.0))[both]
    noise_b = (road_impute(images[2:3], other) - road_impute(images[2:3], other, road_noise=0.0))[both]
    assert abs(float(torch.corrcoef(torch.stack([noise_a, noise_b]))[0, 1])) < 0.1


def test_noise_seed_is_a_pure_function_of_the_bytes():
    """Pinned: a process-salted hash (Python's hash()) or a global RNG would change it; so would any change that
    alters every run's ROAD images, which should then be a deliberate one."""
    image = np.arange(12, dtype=np.float64).reshape(3, 2, 2) / 16  # exact in float32 too
    removed = np.array([[True, False], [False, True]])
    assert noise_seed(image, removed) == noise_seed(image.astype(np.float32), removed.copy())
    assert noise_seed(image, removed) != noise_seed(image, ~removed)
    assert noise_seed(image, removed) == 18372249313957052668


def test_removal_pattern_leaks_far_less_than_with_black_patches():
    """ROAD's aim: the removed patches should not be readable from the perturbed image.

    Two measurable statements on procedural scenes (64 x 64, 8 x 8 patches, half removed at random):

    1. A linear classifier (Fisher's discriminant, trained on 16 images, scored on 16 others) on each patch's mean
       colour and its contrast to the 8 neighbouring patches tells removed from kept patches almost perfectly on
       black-filled images and near chance on ROAD images.
    2. The mask outline is no edge: the mean absolute step across patch edges between a removed and a kept patch,
       over that across edges between two kept patches, is large for black (and for mean-colour) fills and about 1
       for ROAD.

    Not claimed: ROAD's fill is smoother than the scenes' texture, so texture statistics (e.g. the Laplacian inside
    a patch) do find removed patches; a linear classifier on those does as well on ROAD images as on black ones.
    """
    images = torch.from_numpy(make_images(0, range(32)))
    keep = torch.rand(32, 8, 8, generator=torch.Generator().manual_seed(9)) < 0.5
    removed = patch_mask(keep)
    y = (~keep).numpy().reshape(-1)

    def patch_features(x):  # (N, 3, 64, 64) -> (N * 64, 6): mean colour, and its excess over the 8 neighbours
        m = x.reshape(32, 3, 8, P, 8, P).mean(axis=(3, 5))
        pad = np.pad(m, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        nb = sum(pad[:, :, 1 + a : 9 + a, 1 + b : 9 + b] for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b) / 8
        return np.concatenate([m, m - nb], 1).transpose(0, 2, 3, 1).reshape(-1, 6)

    def fisher_accuracy(x):
        f = patch_features(x)
        tr, te = slice(0, 16 * 64), slice(16 * 64, None)
        mu0, mu1 = f[tr][~y[tr]].mean(0), f[tr][y[tr]].mean(0)
        cov = np.cov(f[tr][~y[tr]].T) + np.cov(f[tr][y[tr]].T) + 1e-9 * np.eye(6)
        w = np.linalg.solve(cov, mu1 - mu0)
        return float(((f[te] @ w > (mu0 + mu1) @ w / 2) == y[te]).mean())

    def outline_ratio(x):
        k = keep.numpy()
        outline, kept = [], []
        for g in range(7):
            c = g * P + P - 1
            for step, a, b in (
                (np.abs(x[..., c + 1] - x[..., c]), k[:, :, g], k[:, :, g + 1]),  # edge between columns g, g+1
                (np.abs(x[..., c + 1, :] - x[..., c, :]), k[:, g], k[:, g + 1]),  # edge between rows g, g+1
            ):
                per_edge = step.mean(1).reshape(32, 8, P).mean(2)  # (N, 8)
                outline.append(per_edge[a != b])
                kept.append(per_edge[a & b])
        return float(np.concatenate(outline).mean() / np.concatenate(kept).mean())

    filled = {name: imputer(name)(images, removed, make_baseline(name, images)).numpy() for name in ("zero", "mean")}
    filled["road"] = road_impute(images, removed).numpy()
    assert fisher_accuracy(filled["zero"]) > 0.95
    assert fisher_accuracy(filled["road"]) < 0.6
    assert outline_ratio(filled["zero"]) > 5 and outline_ratio(filled["mean"]) > 1.5
    assert outline_ratio(filled["road"]) < 1.15


@pytest.mark.parametrize("protocol", ["deletion", "insertion"])
def test_engine_runs_with_road_and_matches_the_naive_loop(suite, protocol):
    target = suite.target(suite.units()[:2], baseline="road", seed=0)
    assert target.baseline_name == "road"
    scores = torch.rand(2, *target.grid, generator=torch.Generator().manual_seed(10))
    naive = run_curves_naive(target, scores, protocol, steps=4)
    with torch.no_grad():
        endpoints = (target.forward(target.baseline), target.clean)
    for ends in (None, endpoints):  # every step composed, and the endpoints reused
        batched = run_curves(target, scores, protocol, steps=4, endpoints=ends)
        assert np.isfinite(batched.activations).all()
        np.testing.assert_allclose(batched.activations, naive.activations, rtol=1e-5, atol=1e-5)
