"""The curve engine against Quantus ``RegionPerturbation`` (quantus 0.6.0, the ``bench`` extra), the peer a user
would pick instead, on the same deletion curves: open_clip ViT-B-32 (random weights), an SAE at block 6, 224 px,
8 images x 50 curve points, blur baseline. One ratio in one session, with the curves' agreement asserted.

Quantus is set up as a user would to get the engine's curves:

- the "model" is an ``nn.Module`` whose "logits" for a batch of images are, in column u, z_k of unit u's feature at
  unit u's token (an (N, 8) matrix from one forward pass), and ``y_batch`` = the unit index: Quantus reads column
  ``y_batch[n]`` of row n. The module runs the same truncated forward as the engine (the tower up to block 6, then
  the SAE feature), not the whole model, so that the ratio is about the evaluation loop, not about a truncation a
  Quantus user could also write;
- ``a_batch``: our patch scores upsampled to pixels (every pixel carries its patch's score), (8, 1, 224, 224);
  Quantus broadcasts it over the 3 channels and sums it over each region, so with ``patch_size=32`` its regions
  are our 7 x 7 patches (224 is a multiple of 32: no padding) and ``order="morf"`` ranks them by descending patch
  score, as the engine does (the engine breaks ties by ascending patch index, Quantus's ``np.argsort`` of the
  negated sums does not promise any tie order; the scores here are continuous random numbers without ties);
- ``perturb_func``: each region's pixels are replaced by the unit's own blur-baseline image (the engine's
  ``replace_patches``); the baselines differ per image, so the function takes the flattened baseline images via
  ``perturb_func_kwargs`` and indexes them with the batch rows Quantus hands it (one call per step for the whole
  batch, rows in sample order: ``batch_size=8`` keeps the 8 samples in one batch);
- ``regions_evaluation=49``, ``normalise=False``, ``abs=False``, ``softmax=False``, no warnings, no progress bar.

Quantus evaluates one batch (here all 8 samples) at a time: one forward pass of the clean images, then per region
step one perturbation call and one forward pass of the 8 perturbed images (49 passes of batch 8), and returns per
sample the 49 differences z(clean) - z(after step i), i = 1..49. The engine runs without precomputed endpoints,
so it also computes all 50 points (8 x 50 = 400 images, as Quantus), with its defaults (patch tokens mixed instead
of pixels composed, batches sized by the CPU budget). Both run on the CPU, three rounds each (the median: one
round slowed by other work on a shared machine does not set it).

A second Quantus set-up runs the whole tower (all 12 blocks) and reads z_k at block 6 on the way, as a user who
treats the model as a black box and hooks the block would; it costs the extra blocks the engine does not run.

With the truncated model both do the same model work, and almost all of Quantus's time is its 50 forward passes
(its numpy region bookkeeping and perturbation take about 1%): the ratio is what the engine's larger batches and
its token mixing (no patch embedding of composed pixels) save, not a smaller amount of work.

    pytest benchmarks/test_bench_quantus.py --benchmark-enable --benchmark-only --benchmark-json FILE
"""

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from cafe_bench.protocols.engine import run_curves  # noqa: E402
from cafe_bench.synthetic import random_vit_target  # noqa: E402
from cafe_bench.target import patches_to_pixels  # noqa: E402

LAYER, STEPS, N_IMAGES = 6, 49, 8  # 7 x 7 = 49 patches: one per step, 50 curve points
TARGET_RATIO = 2.2  # the target for quantus / engine
_TIMES = {}


class UnitFeatures(torch.nn.Module):
    """Quantus's "model": images (N, 3, H, W) -> (N, U), column u = z_k of unit u's feature at unit u's token,
    from the tower run up to block ``LAYER`` only, or (``whole``) through every block with z_k read at ``LAYER`` on
    the way, as a user who wraps the model as a black box with a hook would."""

    def __init__(self, target, whole: bool = False):
        super().__init__()
        self.backbone, self.sae = target.backbone, target.saes[LAYER]
        self.layers = [LAYER, target.backbone.n_blocks - 1] if whole else [LAYER]
        self.register_buffer("tokens", torch.tensor([target.backbone.n_prefix_tokens + u.token for u in target.units]))
        self.register_buffer("features", torch.tensor([u.feature for u in target.units]))

    def forward(self, x):
        h = self.backbone.residuals(x, self.layers)[LAYER][:, self.tokens]  # (N, U, d)
        z = self.sae.encode_feature(h.reshape(-1, h.shape[-1]), self.features.repeat(len(x)))
        return z.view(len(x), len(self.tokens))


def replace_by_baseline(arr, indices, perturb_baseline, **kwargs):
    """Quantus perturb_func: row n's ``indices`` (flat pixel indices of one region) show baseline image n."""
    rows = np.arange(len(arr))[:, None]
    out = arr.copy()
    out[rows, indices] = perturb_baseline[rows, indices]
    return out


def _ratio(benchmark, key):
    """Record the median; once the engine is timed (last), store each Quantus set-up's time / the engine's on it."""
    if benchmark.stats is None:  # --benchmark-disable: the agreement is checked, nothing is timed
        return
    _TIMES[key] = benchmark.stats.stats.median
    if key != "engine":
        return
    benchmark.extra_info["target"] = TARGET_RATIO
    for reference in ("quantus", "quantus_whole_model"):
        if reference in _TIMES:
            ratio = _TIMES[reference] / _TIMES["engine"]
            benchmark.extra_info[f"{reference}_over_engine"] = round(ratio, 3)
            benchmark.extra_info[f"{reference}_meets_target"] = ratio >= TARGET_RATIO
            print(f"\n{reference} / engine = {ratio:.2f} (target {TARGET_RATIO})")


@pytest.fixture(scope="module")
def case():
    target = random_vit_target("open_clip:ViT-B-32", LAYER, N_IMAGES)
    scores = torch.rand(N_IMAGES, *target.grid, generator=torch.Generator().manual_seed(2))
    models = {"quantus": UnitFeatures(target).eval(), "quantus_whole_model": UnitFeatures(target, whole=True).eval()}
    x = target.images.numpy()  # Quantus takes numpy arrays
    a = patches_to_pixels(scores, target.grid, target.patch_size).numpy()  # (8, 1, 224, 224)
    metric = quantus.RegionPerturbation(
        patch_size=target.patch_size,
        order="morf",
        regions_evaluation=target.n_patches,
        normalise=False,
        abs=False,
        perturb_func=replace_by_baseline,
        perturb_func_kwargs={"perturb_baseline": target.baseline.reshape(N_IMAGES, -1).numpy()},
        disable_warnings=True,
        display_progressbar=False,
    )
    kwargs = dict(x_batch=x, y_batch=np.arange(N_IMAGES), a_batch=a, channel_first=True)
    return target, scores, metric, models, {**kwargs, "softmax": False, "device": "cpu", "batch_size": N_IMAGES}


@pytest.mark.benchmark(group="ViT-B-32, block 6, 8 images x 50 deletion curve points: engine vs Quantus")
@pytest.mark.parametrize("kind", ["quantus", "quantus_whole_model", "engine"])
def test_engine_vs_quantus(benchmark, case, kind):
    target, scores, metric, models, kwargs = case
    if kind.startswith("quantus"):
        diffs = benchmark.pedantic(lambda: np.stack(metric(model=models[kind], **kwargs)), rounds=3, iterations=1)
        assert diffs.shape == (N_IMAGES, STEPS)
        if "quantus_diffs" in _TIMES:  # both Quantus set-ups give the same curves
            torch.testing.assert_close(torch.from_numpy(diffs), _TIMES["quantus_diffs"], atol=1e-4, rtol=1e-4)
        _TIMES["quantus_diffs"] = torch.from_numpy(diffs)
    else:
        curves = benchmark.pedantic(run_curves, args=(target, scores, "deletion", STEPS), rounds=3, iterations=1)
        acts = torch.from_numpy(curves.activations).float()
        torch.testing.assert_close(acts[:, 0], target.clean, atol=1e-4, rtol=1e-4)
        if "quantus_diffs" in _TIMES:  # the same curves: Quantus returns z(clean) - z(step i), i = 1..49
            diffs = _TIMES["quantus_diffs"].float()
            torch.testing.assert_close(diffs, acts[:, :1] - acts[:, 1:], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(target.clean[:, None] - diffs, acts[:, 1:], atol=1e-4, rtol=1e-4)
            gap = float((acts[:, :1] - acts[:, 1:] - diffs).abs().max())
            benchmark.extra_info["max_abs_curve_diff"] = gap
            print(f"\nlargest |engine - Quantus| over the 8 x 49 points: {gap:.2e}")
    _ratio(benchmark, kind)
