"""timm ViTs behind the same adapter, and the LRP rules on timm's modules."""

import copy

import pytest
import torch

from cafe_bench.attributors.lrp_patches import input_relevance, lrp_rules
from cafe_bench.models import TimmBackbone, build_backbone
from cafe_bench.sae import MatryoshkaBatchTopKSAE
from cafe_bench.target import Target, Unit


def _tiny_timm(seed=0):
    torch.manual_seed(seed)
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=0, qkv_bias=True
    ).eval()


def test_timm_backbone_matches_timm_own_forward():
    model = _tiny_timm()
    backbone = TimmBackbone(model, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert backbone.grid == (4, 4) and backbone.patch_size == 8 and backbone.n_prefix_tokens == 1
    images = torch.rand(2, 3, 32, 32)
    seen = {}
    model.blocks[1].register_forward_hook(lambda mod, inp, out: seen.setdefault("h", out))
    with torch.no_grad():
        model.forward_features((images - 0.5) / 0.25)
        ours = backbone.residuals(images, [1])[1]
    torch.testing.assert_close(ours, seen["h"])


def test_timm_spec_builds_offline():
    spec = {"library": "timm", "model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "depth": 2}}
    backbone = build_backbone(spec)
    assert isinstance(backbone, TimmBackbone) and backbone.grid == (2, 2) and backbone.n_blocks == 2
    with pytest.raises(ValueError, match="valid: open_clip, timm"):
        build_backbone({"library": "keras"})


@pytest.fixture(scope="module")
def zero_bias_timm_target():
    model = _tiny_timm(1)
    sae = MatryoshkaBatchTopKSAE(32, 64, 4, [32, 64])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "pos_embed"):
                p.zero_()
    backbone = TimmBackbone(model, mean=(0.0, 0.0, 0.0), std=(0.25, 0.25, 0.25))
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        z = sae.encode(backbone.residuals(images, [2])[2][:, 1:])  # (B, P, m)
    units = []
    for b in range(len(images)):
        token, feature = divmod(int(z[b].argmax()), z.shape[-1])
        units.append(Unit(2, feature, b, token))
    target = Target(backbone, {2: sae}, units, images, torch.zeros_like(images), [0] * len(units))
    assert (target.clean > 0).all()
    return target


def test_cp_lrp_conserves_on_a_bias_free_timm_vit(zero_bias_timm_target):
    total = input_relevance(zero_bias_timm_target, "cp").sum(dim=(1, 2, 3))
    torch.testing.assert_close(total, zero_bias_timm_target.clean, rtol=1e-4, atol=1e-6)


def test_timm_rules_take_effect_and_are_undone(zero_bias_timm_target):
    from timm.layers import activations, attention, norm

    classes = [norm.LayerNorm, activations.GELU, attention.Attention]
    before = {c: {k: c.__dict__.get(k) for k in ("forward", "original_forward")} for c in classes}
    target = copy.copy(zero_bias_timm_target)
    images = target.images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target.forward(images).sum(), images)
    plain = target.images * grad
    attn = input_relevance(target, "attn")
    assert torch.isfinite(attn).all() and not torch.allclose(attn, plain, rtol=1e-3)
    with lrp_rules("attn"):
        assert attention.Attention.forward is not before[attention.Attention]["forward"]
    after = {c: {k: c.__dict__.get(k) for k in ("forward", "original_forward")} for c in classes}
    assert after == before
