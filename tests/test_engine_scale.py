"""The engine at scale: perturbing patch tokens instead of pixels, batch sizes from a memory budget, and one
forward pass with a batched backward pass for many features on one image."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cafe_bench.attributors import gradient
from cafe_bench.errors import RunConfigError
from cafe_bench.memory import bytes_per_image, default_budget, images_per_batch, parse_memory
from cafe_bench.models import TimmBackbone
from cafe_bench.protocols.baselines import make_baseline
from cafe_bench.protocols.engine import mix_tokens, run_curves, run_curves_naive, token_pair, use_tokens
from cafe_bench.sae import MatryoshkaBatchTopKSAE
from cafe_bench.suites import load_suite
from cafe_bench.synthetic import PatchMeanBackbone, strongest_features
from cafe_bench.target import Target, Unit

PROTOCOLS = ["insertion", "deletion", "insertion_lerf", "deletion_lerf"]


@pytest.fixture(scope="module")
def relations():
    return load_suite("relations")


@pytest.fixture(scope="module")
def open_clip_target(relations):
    """Six units of the default suite (open_clip ViT) on two layers, blur baseline."""
    units = relations.units([1])[:3] + relations.units([5])[:3]
    return relations.target(units, baseline="blur")


def _timm_target(baseline="blur"):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=0).eval()
    backbone = TimmBackbone(model, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    sae = MatryoshkaBatchTopKSAE(32, 64, 8, [32, 64])
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        codes = sae.encode(backbone.residuals(images, [2])[2][:, 1:])  # (B, P, m)
    units = []
    for b in range(4):
        token, feature = divmod(int(codes[b].argmax()), codes.shape[-1])
        units.append(Unit(2, feature, b, token))
    base = make_baseline(baseline, images)
    return Target(backbone, {2: sae}, units, images, base, [0] * 4, baseline_name=baseline)


@pytest.fixture(scope="module")
def timm_target():
    return _timm_target()


def _check_token_path(target, protocol):
    scores = torch.rand(len(target), *target.grid, generator=torch.Generator().manual_seed(5))
    assert use_tokens(target)
    tokens = run_curves(target, scores, protocol, target.n_patches, tokens=True).activations
    pixels = run_curves(target, scores, protocol, target.n_patches, tokens=False).activations
    naive = run_curves_naive(target, scores, protocol, target.n_patches).activations
    np.testing.assert_allclose(tokens, pixels, atol=1e-5, rtol=0)
    np.testing.assert_allclose(tokens, naive, atol=1e-5, rtol=0)
    assert np.ptp(tokens, axis=1).max() > 0.1  # the curves move: the check has something to compare


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_token_mixing_equals_composed_pixels_open_clip(open_clip_target, protocol):
    _check_token_path(open_clip_target, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_token_mixing_equals_composed_pixels_timm(timm_target, protocol):
    _check_token_path(timm_target, protocol)


def test_wrongly_mixed_tokens_are_caught(open_clip_target):
    """The mutation the equality test must catch: tokens mixed the other way round (deletion's for insertion)."""
    t = open_clip_target
    taken = torch.zeros(len(t), t.n_patches, dtype=torch.bool)
    taken[:, : t.n_patches // 4] = True
    idx = torch.arange(len(t))
    with torch.no_grad():
        right = t.activations_from_tokens(mix_tokens(token_pair(t), taken, idx, "insertion"), idx)
        wrong = t.activations_from_tokens(mix_tokens(token_pair(t), taken, idx, "deletion"), idx)
    assert (right - wrong).abs().max() > 1e-2


def test_mask_dependent_baseline_and_pixel_only_backbones_compose_pixels(relations):
    road = relations.target(relations.units([5])[:2], baseline="road")
    assert not use_tokens(road)  # auto: ROAD's fill depends on the mask
    with pytest.raises(ValueError, match="road"):
        use_tokens(road, tokens=True)
    backbone = PatchMeanBackbone()
    sae = MatryoshkaBatchTopKSAE(4, 8, 2, [4, 8])
    images = torch.rand(1, 3, 8, 8)
    plain = Target(backbone, {0: sae}, [Unit(0, 0, 0, 0)], images, torch.zeros_like(images), [0])
    assert not plain.has_patch_tokens and not use_tokens(plain)
    with pytest.raises(ValueError, match="PatchMeanBackbone does not expose a patch embedding"):
        use_tokens(plain, tokens=True)


def test_timm_stem_that_mixes_patches_is_pixels_only(timm_target):
    assert timm_target.has_patch_tokens
    model = timm_target.backbone.model

    class Hybrid(torch.nn.Module):  # stands for a CNN stem: not timm's plain PatchEmbed
        def __init__(self, inner):
            super().__init__()
            self.inner, self.patch_size, self.grid_size = inner, inner.patch_size, inner.grid_size

        def forward(self, x):
            return self.inner(x)

    original = model.patch_embed
    try:
        model.patch_embed = Hybrid(original)
        assert not TimmBackbone(model).has_patch_tokens
    finally:
        model.patch_embed = original


# --- memory budget ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1.5 * 10**9), ("3000000", 3 * 10**6), (2**30, 2**30)],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["12XB", "lots", "-1GB", "", "100kB"])
def test_parse_memory_refuses_with_the_format(text):
    with pytest.raises(RunConfigError, match="GB|1MiB"):
        parse_memory(text)


def test_batch_size_follows_the_budget(open_clip_target, monkeypatch):
    t = open_clip_target
    per_image = bytes_per_image(t.backbone, 5, True)
    assert images_per_batch(t.backbone, 5, True, 7 * per_image + per_image // 2) == 7
    assert images_per_batch(t.backbone, 5, True, 1) == 1  # never zero
    assert default_budget("cpu") == 64 * 2**20
    sizes = []
    original = Target.activations_from_tokens

    def spy(self, tokens, unit_idx):
        sizes.append(len(tokens))
        return original(self, tokens, unit_idx)

    monkeypatch.setattr(Target, "activations_from_tokens", spy)
    scores = torch.rand(len(t), *t.grid, generator=torch.Generator().manual_seed(6))
    small = run_curves(t, scores, "deletion", 16, max_memory=7 * per_image).activations
    n_images = len(t) * 17  # no endpoints given: steps 0..16 are all forward passes
    assert max(sizes) == 7 and len(sizes) == -(-n_images // 7)
    sizes.clear()
    large = run_curves(t, scores, "deletion", 16, max_memory=10**9).activations
    assert len(sizes) == 1
    np.testing.assert_allclose(small, large, atol=1e-5, rtol=0)


def test_cuda_budget_counts_the_allocators_cache_as_free(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * gib)
    assert default_budget("cuda") == int(0.8 * 14 * gib)  # 10 free + 4 cached but unused


_PEAK = """
import json, sys, torch
from cafe_bench.memory import bytes_per_image, images_per_batch
from cafe_bench.protocols.engine import run_curves
from cafe_bench.synthetic import random_vit_target
tokens = sys.argv[1] == "1"
t = random_vit_target("open_clip:ViT-B-32", 6, 2, size=224)
scores = torch.rand(2, *t.grid)
ends = (t.forward(t.baseline), t.clean)
run_curves(t, scores, "deletion", 8, 1, ends, tokens=tokens)  # allocator and kernels warmed up
budget = 48 * bytes_per_image(t.backbone, 6, tokens)
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here, not from loading the model
before = status("VmRSS:")
run_curves(t, scores, "deletion", t.n_patches, None, ends, budget, tokens)  # 2 x 48 images, 48 per pass
after = status("VmHWM:")
batch = images_per_batch(t.backbone, 6, tokens, budget)
print(json.dumps({"grew": after - before, "budget": budget, "batch": batch}))
"""


@pytest.mark.parametrize("tokens", [True, False])
def test_a_forward_pass_stays_within_its_budget(tokens):
    """Peak memory of a fresh process grows by less than the budget when the engine sizes its batches from it
    (ViT-B-32, random weights); a batch size that ignored the budget (all 96 images at once) would exceed it."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, "1" if tokens else "0"], capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["batch"] == 48
    assert 0 < got["grew"] <= got["budget"]
    assert got["grew"] > got["budget"] / 8  # the estimate is an upper bound, not a wild one


def test_run_records_the_budget_and_refuses_a_bad_one(relations, tmp_path, capsys):
    import cafe_bench
    from cafe_bench.cli import main

    kwargs = {"methods": ["activation"], "layers": [5], "progress": False}
    df = cafe_bench.run(relations, out=tmp_path / "a", max_memory="2MiB", **kwargs)
    ref = cafe_bench.run(relations, **kwargs)
    np.testing.assert_allclose(np.stack(df["curve"]), np.stack(ref["curve"]), atol=1e-6, rtol=0)
    engine = json.loads((tmp_path / "a" / "run.json").read_text())["engine"]
    assert engine == {"max_memory_bytes": 2 * 2**20, "forward_batch": None, "token_mixing": True}
    assert main(["run", "--max-memory", "12XB", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kB, MB, GB" in err[0]
    assert not (tmp_path / "b").exists()


# --- many features on one image: one forward pass, a batched backward pass ---------------------------------------


def _shared_image_target(relations, n_features=6):
    unit = relations.units([5])[0]
    strongest = strongest_features(relations.target([unit]), 0, n_features)
    other = relations.units([5])[-1]
    units = [*strongest, other, Unit(5, strongest[0].feature, unit.image_id, 0)]
    t = relations.target(units)
    t.max_memory = 2**20  # 2 images of this model per pass: the 7 units on one image (7 rows > 2) share its pass
    return t


@pytest.mark.parametrize("chunk", [None, 1])
def test_shared_forward_gradient_equals_one_row_per_unit(relations, monkeypatch, chunk):
    t = _shared_image_target(relations)
    rows, image_row = t.distinct_images()
    assert len(rows) == 2 and image_row.tolist() == [0] * 6 + [1, 0]
    if chunk is not None:  # one feature per backward pass: the chunked path
        monkeypatch.setattr(gradient, "GRAD_CHUNK_BYTES", 1)
    calls = _counting_shared_gradient(monkeypatch)
    shared = gradient.input_gradient(t)
    assert calls == [(1, 7)]
    plain = gradient.input_gradient(t, shared=False)
    assert plain.abs().max() > 0
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    one = torch.cat([gradient.input_gradient(relations.target([u])) for u in t.units])
    torch.testing.assert_close(plain, one, atol=1e-5, rtol=1e-4)


def test_shared_backward_chunks_follow_the_targets_memory_budget(relations, monkeypatch):
    t = _shared_image_target(relations)  # 7 units share one image
    batched = []
    real = torch.autograd.grad

    def spy(outputs, inputs, grad_outputs=None, **kwargs):
        if kwargs.get("is_grads_batched"):
            batched.append(len(grad_outputs))
        return real(outputs, inputs, grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    per_image = bytes_per_image(t.backbone, 5, t.has_patch_tokens)
    t.max_memory = 3 * per_image  # 3 images per pass: 7 rows share, in chunks of at most 3 features
    three = gradient.input_gradient(t)
    assert batched == [3, 3, 1]
    batched.clear()
    t.max_memory = 6 * per_image  # 6 images: chunks of at most 6, balanced
    torch.testing.assert_close(gradient.input_gradient(t), three, atol=1e-5, rtol=1e-4)
    assert batched == [4, 3]


def test_a_group_that_fits_one_pass_rides_in_the_row_pass(relations, monkeypatch):
    t = _shared_image_target(relations)
    t.max_memory = None  # the CPU default holds 141 images of this model: 7 rows fit one pass
    calls = _counting_shared_gradient(monkeypatch)
    rows = gradient.input_gradient(t)
    assert calls == []
    t.max_memory = 7 * bytes_per_image(t.backbone, 5, t.has_patch_tokens)  # exactly 7: still rows
    gradient.input_gradient(t)
    assert calls == []
    t.max_memory = 6 * bytes_per_image(t.backbone, 5, t.has_patch_tokens)  # 7 rows outgrow 6: shared
    torch.testing.assert_close(gradient.input_gradient(t), rows, atol=1e-5, rtol=1e-4)
    assert calls == [(1, 7)]


def test_a_run_hands_its_memory_budget_to_the_targets(monkeypatch):
    import cafe_bench

    seen = []
    real = gradient._shared_gradient

    def spy(target, images, units):
        seen.append(target.max_memory)
        return real(target, images, units)

    monkeypatch.setattr(gradient, "_shared_gradient", spy)
    # 1 MiB holds 2 images of relations; integrated gradients' pairs of units on one image (2 units x 2 steps per
    # pass and more) outgrow it and share
    run = dict(methods=["integrated_gradients"], protocols=["insertion"], layers=[5], progress=False)
    cafe_bench.run(**run, max_memory="1MiB")
    assert seen and set(seen) == {2**20}


@pytest.mark.parametrize("rules", ["attn", "cp"])
def test_shared_forward_under_lrp_rules_equals_one_row_per_unit(relations, rules, monkeypatch):
    from cafe_bench.attributors.lrp_patches import lrp_rules

    t = _shared_image_target(relations)
    calls = _counting_shared_gradient(monkeypatch)
    with lrp_rules(rules):
        shared = gradient.input_gradient(t)
    assert calls == [(1, 7)]
    with lrp_rules(rules):
        plain = gradient.input_gradient(t, shared=False)
    with torch.no_grad():  # the rules act: the plain gradient differs from the relevance gradient
        assert (gradient.input_gradient(t, shared=False) - plain).abs().max() > 1e-3
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)


def _counting_shared_gradient(monkeypatch):
    calls = []
    real = gradient._shared_gradient

    def counted(target, images, units):
        calls.append((len(images), len(units)))
        return real(target, images, units)

    monkeypatch.setattr(gradient, "_shared_gradient", counted)
    return calls


@pytest.mark.parametrize("chunk", [None, 1])
def test_shared_integrated_gradients_equal_one_row_per_unit(relations, monkeypatch, chunk):
    from cafe_bench.attributors.captum_methods import integrated_gradients

    t = _shared_image_target(relations)
    plain, plain_delta = integrated_gradients(t, n_steps=8, return_convergence_delta=True, shared=False)
    if chunk is not None:  # one feature per batched backward pass
        monkeypatch.setattr(gradient, "GRAD_CHUNK_BYTES", 1)
    calls = _counting_shared_gradient(monkeypatch)
    shared, delta = integrated_gradients(t, n_steps=8, batch_size=6, return_convergence_delta=True)
    # 7 of the 8 units share one image and baseline, so a step has 2 distinct images; 6 images per pass: 3 steps per
    # pass, and the 8 steps take 3 passes of the shared group
    assert calls == [(3, 7), (3, 7), (2, 7)]
    assert plain.abs().max() > 0
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta, plain_delta, atol=1e-5, rtol=1e-4)
    one = torch.cat([integrated_gradients(relations.target([u]), n_steps=8) for u in t.units])
    torch.testing.assert_close(plain, one, atol=1e-5, rtol=1e-4)


def test_shared_integrated_gradients_bound_captums_interpolated_images(relations, monkeypatch):
    from cafe_bench.attributors import captum_methods

    t = _shared_image_target(relations)
    per_row = t.images[0].numel() * t.images.element_size()
    monkeypatch.setattr(captum_methods, "PATH_ROWS_BYTES", 2 * len(t) * per_row)  # 2 steps of all 8 units
    calls = _counting_shared_gradient(monkeypatch)
    capped = captum_methods.integrated_gradients(t, n_steps=8, batch_size=1000)
    assert calls == [(2, 7)] * 4  # without the bound: one pass of all 8 steps
    torch.testing.assert_close(capped, captum_methods.integrated_gradients(t, 8, shared=False), atol=1e-5, rtol=1e-4)


def test_shared_integrated_gradients_keep_their_passes_within_batch_size(relations, monkeypatch):
    from cafe_bench.attributors import captum_methods

    pair = relations.target(relations.units([5])[:2])  # two images, 16 features at each one's token
    t = relations.target(strongest_features(pair, 0, 16) + strongest_features(pair, 1, 16))
    sizes = []
    real_rows, real_shared = gradient._row_gradient, gradient._shared_gradient
    monkeypatch.setattr(
        gradient, "_row_gradient", lambda tg, x, u: sizes.append(x.shape[0] * x.shape[1]) or real_rows(tg, x, u)
    )
    monkeypatch.setattr(gradient, "_shared_gradient", lambda tg, x, u: sizes.append(len(x)) or real_shared(tg, x, u))
    out = captum_methods.integrated_gradients(t, n_steps=40, batch_size=64)
    assert sizes and max(sizes) <= 64  # no pass larger than batch_size, the last, shorter one included
    torch.testing.assert_close(out, captum_methods.integrated_gradients(t, 40, shared=False), atol=1e-5, rtol=1e-4)


def test_shared_integrated_gradients_only_share_one_baseline(relations, monkeypatch):
    from cafe_bench.attributors.captum_methods import integrated_gradients

    t = _shared_image_target(relations)
    t.baseline = t.baseline.clone()
    t.baseline[1:3] = 0.5  # units 1 and 2 share the image but not the baseline of unit 0
    calls = _counting_shared_gradient(monkeypatch)
    shared = integrated_gradients(t, n_steps=4, batch_size=1000)
    assert calls == [(4, 5)]  # units 0, 3, 4, 5, 7 share; 1 and 2 are rows (equal inputs, but only to each other)
    torch.testing.assert_close(shared, integrated_gradients(t, n_steps=4, shared=False), atol=1e-5, rtol=1e-4)


def test_shared_integrated_gradients_refuse_an_unknown_row_layout(relations, monkeypatch):
    from captum.attr._core import integrated_gradients as captum_ig

    from cafe_bench.attributors.captum_methods import integrated_gradients

    def unit_major(args, n_steps, *rest):  # rows unit by unit instead of step by step
        return tuple(a.repeat_interleave(n_steps) for a in args)

    monkeypatch.setattr(captum_ig, "_expand_additional_forward_args", unit_major)
    t = _shared_image_target(relations)
    with pytest.raises(RuntimeError, match="not laid out step by step"):
        integrated_gradients(t, n_steps=4)


def test_shared_forward_gradient_without_patch_tokens(monkeypatch):
    backbone = PatchMeanBackbone(patch_size=2, grid=(2, 2), n_blocks=2)
    sae = MatryoshkaBatchTopKSAE(4, 8, 4, [4, 8])
    with torch.no_grad():
        torch.nn.init.normal_(sae.W_enc)
        sae.b_enc.fill_(10.0)  # every feature fires: the gradients are not zero
    images = torch.rand(1, 3, 4, 4).expand(3, -1, -1, -1).contiguous()
    units = [Unit(1, f, 0, 1) for f in range(3)]
    t = Target(backbone, {1: sae}, units, images, torch.zeros_like(images), [0] * 3)
    t.max_memory = 1  # one image per pass: the 3 units on one image share it
    assert not t.has_patch_tokens and len(t.distinct_images()[0]) == 1
    plain = gradient.input_gradient(t, shared=False)
    assert plain.abs().amax(dim=(1, 2, 3)).min() > 0  # every unit has a gradient (at its own patch)
    calls = _counting_shared_gradient(monkeypatch)
    torch.testing.assert_close(gradient.input_gradient(t, shared=True), plain)
    assert calls == [(1, 3)]
    assert not gradient.input_gradient(t, shared=False).equal(torch.zeros_like(plain))


# --- reduced precision -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_aucs_stay_within_the_stated_tolerance(relations, precision):
    from cafe_bench.attributors.registry import get_attributor
    from cafe_bench.protocols.engine import PRECISION_TOLERANCE, normalised
    from cafe_bench.stats import auc

    t = relations.target(relations.units([5])[:8])
    scores = get_attributor("gradient").scores(t)
    ends = (t.forward(t.baseline), t.clean)
    clean = t.clean.numpy()

    def aucs(p):
        curves = run_curves(t, scores, "insertion", 32, None, ends, precision=p)
        return np.array([auc(curves.fractions, row) for row in normalised(curves, clean)])

    diff = np.abs(aucs(precision) - aucs("fp32"))
    assert 0 < diff.max() <= PRECISION_TOLERANCE[precision]  # autocast did act, and stayed within the tolerance


def test_precision_is_recorded_refused_when_unknown_and_not_mixed_on_resume(relations, tmp_path, capsys):
    import cafe_bench
    from cafe_bench.cli import main

    kwargs = {"methods": ["activation"], "layers": [5], "progress": False, "out": tmp_path / "run"}
    cafe_bench.run(relations, precision="bf16", **kwargs)
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["precision"] == "bf16"
    with pytest.raises(RunConfigError, match="precision"):
        cafe_bench.run(relations, resume=True, **kwargs)  # fp32 onto a bf16 run
    assert main(["run", "--precision", "fp8", "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "valid: fp32, bf16, fp16" in err[0]
    assert not (tmp_path / "b").exists()


def test_gradient_of_a_stand_in_target_without_the_sharing_surface(additive_target):
    """A duck-typed target (no ``distinct_images``) gets the row gradient; z = sum(w * image) has gradient w."""
    weights = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(7))
    images = torch.rand(2, 3, 4, 4).double()
    t = additive_target(weights, images, torch.zeros_like(images))
    assert not hasattr(t, "distinct_images")
    grad = gradient.input_gradient(t)
    torch.testing.assert_close(grad, weights.double()[:, None].expand(-1, 3, -1, -1))


def test_forward_distinct_passes_each_image_once(relations, monkeypatch):
    t = _shared_image_target(relations)  # 8 units on 2 images
    seen = []
    original = t.backbone.residuals

    def spy(images, layers, tokens=None):
        seen.append(len(images if tokens is None else tokens))
        return original(images, layers, tokens)

    monkeypatch.setattr(t.backbone, "residuals", spy)
    with torch.no_grad():
        shared = t.forward_distinct(t.baseline)
        assert seen == [2]
        plain = t.forward(t.baseline)
        assert seen == [2, 8]
        torch.testing.assert_close(shared, plain, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(t.forward_distinct(t.images), t.clean)
        noisy = t.images + 0.01 * torch.rand_like(t.images)  # rows of one image differ now: one row per unit
        torch.testing.assert_close(t.forward_distinct(noisy), t.forward(noisy))
        assert seen[-2:] == [8, 8]


def test_reduced_precision_with_an_sae_that_returns_half_precision(relations, monkeypatch):
    """An SAE whose encoder runs in autocast's dtype (an nn.Linear encoder) returns bf16 codes: the curves still come
    back as fp32, close to the fp32 ones."""
    t = relations.target(relations.units([5])[:4])
    sae = relations.saes[5]
    original = type(sae).encode_feature
    monkeypatch.setattr(type(sae), "encode_feature", lambda self, x, f: original(self, x, f).to(torch.bfloat16))
    scores = torch.rand(len(t), *t.grid, generator=torch.Generator().manual_seed(8))
    half = run_curves(t, scores, "insertion", 8, precision="bf16").activations
    monkeypatch.undo()
    full = run_curves(t, scores, "insertion", 8).activations
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.1 * np.abs(full).max(), rtol=0)


def test_memory_estimate_of_a_backbone_without_parameters():
    assert bytes_per_image(PatchMeanBackbone(), 0, False) > 0  # counted as fp32
