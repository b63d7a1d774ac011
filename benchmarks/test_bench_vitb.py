"""The curve engine at a realistic model size: open_clip ViT-B-32 (random weights), an SAE at block 6, 224 px,
8 images x 50 deletion curve points. Two ratios in one session, with the curves' agreement asserted:

- engine vs naive: the naive reference runs the whole model, one forward pass per step and image (batch 1), as a
  toolkit that treats the model as a black box does;
- engine vs the pure truncated forward of the same perturbed images at the engine's batch size: what is left
  above the limit (composing images, reading the feature);
- 16 features on one image, gradient, grad x input and integrated gradients (16 steps): the engine (one forward
  pass of the image, or of its interpolation points, and a backward pass per feature, batched over the features
  where the budget allows) and 16 rows of batched forward and backward passes (``shared=False``), each against 16
  separate attributions.

The engine runs with its defaults: patch tokens mixed instead of pixels composed, batches sized by the CPU budget.

    pytest benchmarks/test_bench_vitb.py --benchmark-enable --benchmark-only --benchmark-json FILE
"""

import pytest
import torch

from cafe_bench.memory import default_budget, images_per_batch
from cafe_bench.protocols.engine import compose, mix_tokens, run_curves, step_counts, step_masks, token_pair
from cafe_bench.synthetic import random_vit_target, strongest_features
from cafe_bench.target import Target

LAYER, STEPS, N_IMAGES = 6, 49, 8  # 7 x 7 = 49 patches: one per step, 50 curve points
IG_STEPS = 16  # integrated gradients' interpolation points in the 16-features case (the method's default is 32)
_TIMES = {}


def _ratio(benchmark, group, key, reference):
    """Record the median; once both are timed, store reference / engine and engine / reference on the second."""
    _TIMES[(group, key)] = benchmark.stats.stats.median
    if (group, reference) in _TIMES and (group, "engine") in _TIMES:
        ratio = _TIMES[(group, reference)] / _TIMES[(group, "engine")]
        benchmark.extra_info[f"{reference}_over_engine"] = round(ratio, 3)
        benchmark.extra_info[f"engine_over_{reference}"] = round(1 / ratio, 3)
        print(f"\n{group}: {reference} / engine = {ratio:.2f}")


@pytest.fixture(scope="module")
def case():
    target = random_vit_target("open_clip:ViT-B-32", LAYER, N_IMAGES)
    scores = torch.rand(N_IMAGES, *target.grid, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ends = (target.forward(target.baseline), target.clean)
    return target, scores, ends


def _naive(target, scores):
    """One full-model forward pass per step and image: the whole tower runs, z_k read at block 6."""
    b = len(target)
    counts = step_counts(target.n_patches, STEPS)
    masks = step_masks(scores.reshape(b, -1), counts)
    out = torch.empty(b, STEPS + 1)
    last = target.backbone.n_blocks - 1
    with torch.no_grad():
        for u in range(b):
            for i in range(STEPS + 1):
                image = compose(target.images, target.baseline, masks[u, i][None], torch.tensor([u]), "deletion",
                                target.grid, target.patch_size)  # fmt: skip
                res = target.backbone.residuals(image, [LAYER, last])  # runs to the last block
                h = res[LAYER][:, target.backbone.n_prefix_tokens + target.units[u].token]
                out[u, i] = target.saes[LAYER].encode_feature(h, torch.tensor([target.units[u].feature]))[0]
    return out


@pytest.mark.benchmark(group="ViT-B-32, block 6, 8 images x 50 deletion curve points: engine vs naive")
@pytest.mark.parametrize("kind", ["naive", "engine"])
def test_engine_vs_naive(benchmark, case, kind):
    target, scores, ends = case
    if kind == "naive":
        acts = benchmark.pedantic(_naive, args=(target, scores), rounds=1, iterations=1)
        _TIMES["naive_curves"] = acts
    else:
        curves = benchmark.pedantic(
            run_curves, args=(target, scores, "deletion", STEPS, None, ends), rounds=2, iterations=1
        )
        acts = torch.from_numpy(curves.activations)
        if "naive_curves" in _TIMES:  # the same curves
            torch.testing.assert_close(acts.float(), _TIMES["naive_curves"].float(), atol=1e-4, rtol=1e-4)
    _ratio(benchmark, "vitb", kind, "naive")


@pytest.mark.benchmark(group="ViT-B-32, block 6, 8 images x 50 deletion curve points: engine vs pure forward")
@pytest.mark.parametrize("kind", ["pure_forward", "engine"])
def test_engine_vs_pure_forward(benchmark, case, kind):
    target, scores, ends = case
    b = len(target)
    counts = step_counts(target.n_patches, STEPS)
    todo = [i for i, c in enumerate(counts) if 0 < c < target.n_patches]
    masks = step_masks(scores.reshape(b, -1), counts)[:, todo].reshape(-1, target.n_patches)
    unit_idx = torch.arange(b).repeat_interleave(len(todo))
    with torch.no_grad():  # the perturbed patch tokens, made outside the timed part
        tokens = mix_tokens(token_pair(target), masks, unit_idx, "deletion")
    batch = images_per_batch(target.backbone, LAYER, True, default_budget("cpu"))

    def pure():
        with torch.no_grad():
            for lo in range(0, len(tokens), batch):
                target.backbone.residuals(None, [LAYER], tokens[lo : lo + batch])

    if kind == "pure_forward":
        benchmark.pedantic(pure, rounds=2, iterations=1)
    else:
        benchmark.pedantic(run_curves, args=(target, scores, "deletion", STEPS, None, ends), rounds=2, iterations=1)
    benchmark.extra_info["batch"] = batch
    _ratio(benchmark, "pure", kind, "pure_forward")


@pytest.fixture(scope="module")
def shared_image_case(case):
    """16 features of the SAE at one image and token of ViT-B-32: the features that fire most there."""
    target, _, _ = case
    units = strongest_features(target, 0, 16)
    images = target.images[:1].expand(16, -1, -1, -1).contiguous()
    base = target.baseline[:1].expand(16, -1, -1, -1).contiguous()
    return target, units, images, base


@pytest.mark.benchmark(group="ViT-B-32, 16 features on one image: gradient methods, batched vs one by one")
@pytest.mark.parametrize("method", ["gradient", "grad_x_input", "integrated_gradients"])
@pytest.mark.parametrize("kind", ["one_by_one", "rows", "engine"])
def test_many_features_on_one_image(benchmark, shared_image_case, method, kind):
    from cafe_bench.attributors.captum_methods import integrated_gradients
    from cafe_bench.attributors.gradient import input_gradient
    from cafe_bench.attributors.registry import get_attributor

    target, units, images, base = shared_image_case
    params = {"n_steps": IG_STEPS} if method == "integrated_gradients" else {}
    attributor = get_attributor(method, **params)
    benchmark.extra_info.update(params)

    def make(idx):
        return Target(target.backbone, target.saes, [units[i] for i in idx], images[idx], base[idx], [0] * len(idx))

    def rows():  # the image repeated in 16 rows: batched forward and backward passes
        t = make(list(range(16)))
        if method == "integrated_gradients":
            return t.pool(integrated_gradients(t, IG_STEPS, shared=False))
        grad = input_gradient(t, shared=False)
        return t.pool(grad.abs() if method == "gradient" else grad * t.images)

    if kind == "one_by_one":  # a forward and a backward pass per feature
        maps = benchmark.pedantic(
            lambda: torch.cat([attributor.scores(make([i])) for i in range(16)]), rounds=2, iterations=1
        )
        _TIMES[(method, "maps")] = maps
    elif kind == "engine":
        maps = benchmark.pedantic(lambda: attributor.scores(make(list(range(16)))), rounds=2, iterations=1)
    else:
        maps = benchmark.pedantic(rows, rounds=2, iterations=1)
    if (method, "maps") in _TIMES:
        torch.testing.assert_close(maps, _TIMES[(method, "maps")], atol=1e-5, rtol=1e-4)
    if kind != "rows":
        _ratio(benchmark, f"shared-{method}", kind, "one_by_one")
    elif (f"shared-{method}", "one_by_one") in _TIMES:  # one_by_one runs first (parametrize order)
        ratio = _TIMES[(f"shared-{method}", "one_by_one")] / benchmark.stats.stats.median
        benchmark.extra_info["one_by_one_over_rows"] = round(ratio, 3)
