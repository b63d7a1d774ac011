"""load_backbone(name): library-built towers behind the adapter, offline refusals, and CP-LRP on a named model."""

import copy

import pytest
import torch

from cafe_bench.errors import CafeBenchError
from cafe_bench.models import OpenClipBackbone, TimmBackbone
from cafe_bench.models.factory import load_backbone

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def b32():
    torch.manual_seed(0)
    return load_backbone("open_clip:ViT-B-32")


@pytest.fixture(scope="module")
def dino_reg():
    torch.manual_seed(0)
    return load_backbone("timm:vit_small_patch14_reg4_dinov2", img_size=112)


def _hooked(block, run):
    seen = {}
    handle = block.register_forward_hook(lambda mod, inp, out: seen.setdefault("h", out))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen["h"]


def test_open_clip_b32_matches_the_library(b32):
    from open_clip.transformer import VisionTransformer

    v = b32.visual
    assert isinstance(b32, OpenClipBackbone) and isinstance(v, VisionTransformer)
    assert b32.grid == tuple(v.grid_size) == (7, 7) and b32.patch_size == 32
    assert b32.n_blocks == len(v.transformer.resblocks) == 12 and b32.width == 768
    assert b32.n_prefix_tokens == 1
    torch.testing.assert_close(b32.mean.flatten(), torch.tensor(v.preprocess_cfg["mean"]))
    torch.testing.assert_close(b32.std.flatten(), torch.tensor(v.preprocess_cfg["std"]))
    torch.testing.assert_close(b32.mean.flatten(), torch.tensor(OPENAI_MEAN))
    torch.testing.assert_close(b32.std.flatten(), torch.tensor(OPENAI_STD))
    images = torch.rand(2, 3, 224, 224)
    normed = (images - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    ref = _hooked(v.transformer.resblocks[5], lambda: v(normed))
    with torch.no_grad():
        ours = b32.residuals(images, [5])[5]
    assert ours.shape == (2, 1 + 49, 768)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_timm_dinov2_with_registers_matches_the_library(dino_reg):
    m = dino_reg.model
    assert isinstance(dino_reg, TimmBackbone)
    assert dino_reg.grid == tuple(m.patch_embed.grid_size) == (8, 8) and dino_reg.patch_size == 14
    assert dino_reg.n_blocks == len(m.blocks) == 12 and dino_reg.width == 384
    assert dino_reg.n_prefix_tokens == m.num_prefix_tokens == 5  # CLS + 4 registers
    assert type(m.blocks[0].ls1).__name__ == "LayerScale"
    torch.testing.assert_close(dino_reg.mean.flatten(), torch.tensor(m.pretrained_cfg["mean"]))
    torch.testing.assert_close(dino_reg.std.flatten(), torch.tensor(m.pretrained_cfg["std"]))
    assert m.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))  # ImageNet, not CLIP
    # layer scale, registers and pos-embed of a random init are not trivial: give them values so a skip shows
    with torch.no_grad():
        for blk in m.blocks:
            blk.ls1.gamma.uniform_(0.5, 1.5)
            blk.ls2.gamma.uniform_(0.5, 1.5)
        m.reg_token.normal_()
        m.cls_token.normal_()
    images = torch.rand(2, 3, 112, 112)
    mean = torch.tensor(m.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(m.pretrained_cfg["std"]).view(1, 3, 1, 1)
    ref = _hooked(m.blocks[3], lambda: m.forward_features((images - mean) / std))
    with torch.no_grad():
        ours = dino_reg.residuals(images, [3])[3]
    assert ours.shape == (2, 5 + 64, 384)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_vit_l14_quickgelu_builds_with_quickgelu():
    from open_clip.transformer import QuickGELU

    backbone = load_backbone("open_clip:ViT-L-14-quickgelu")
    acts = [blk.mlp.gelu for blk in backbone.blocks]
    assert backbone.n_blocks == 24 and backbone.width == 1024 and backbone.grid == (16, 16)
    assert all(isinstance(a, QuickGELU) for a in acts)
    assert not any(isinstance(mod, torch.nn.GELU) for mod in backbone.modules())
    assert [name for name, _ in backbone.named_children()] == ["visual"]  # the text tower is not kept
    assert sum(p.numel() for p in backbone.parameters()) < 310e6  # ViT-L/14 visual ~304M; with text ~428M


def test_plain_vit_b32_uses_gelu(b32):
    from open_clip.transformer import QuickGELU

    assert all(type(blk.mlp.gelu) is torch.nn.GELU and not isinstance(blk.mlp.gelu, QuickGELU) for blk in b32.blocks)


def _one_line_error(match, *args, **kwargs):
    with pytest.raises(CafeBenchError, match=match) as info:
        load_backbone(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_openai_tag_on_plain_vit_l14_is_refused_naming_quickgelu():
    msg = _one_line_error("QuickGELU", "open_clip:ViT-L-14", pretrained="openai")
    assert "open_clip:ViT-L-14-quickgelu" in msg


def test_pretrained_tags_that_need_a_download_are_refused():
    msg = _one_line_error("cannot be fetched", "open_clip:ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert "laion2b_s34b_b79k" in msg and "ViT-B-32" in msg and "local checkpoint" in msg
    msg = _one_line_error("cannot be fetched", "open_clip:ViT-L-14-quickgelu", pretrained="openai")
    assert "openai" in msg and "QuickGELU" not in msg
    _one_line_error("cannot be fetched", "timm:vit_base_patch16_224", pretrained="augreg_in21k")
    _one_line_error("not found", "open_clip:ViT-B-32", pretrained="/nonexistent/w.safetensors")


def test_unknown_names_are_refused_with_how_to_list():
    msg = _one_line_error("valid|one of", "keras:ViT-B-32")
    assert "open_clip" in msg and "timm" in msg
    _one_line_error("LIBRARY:MODEL", "ViT-B-32")
    msg = _one_line_error("unknown open_clip model", "open_clip:ViT-B-33")
    assert "open_clip.list_models()" in msg and "ViT-B-32" in msg and len(msg) < 300
    msg = _one_line_error("unknown timm model", "timm:vit_smal_patch14_dinov2")
    assert 'timm.list_models("vit_*")' in msg and "vit_small_patch14_dinov2" in msg and len(msg) < 300
    _one_line_error("unknown open_clip model", "open_clip:hf-hub:timm/ViT-B-32")


def test_local_checkpoints_load_for_both_libraries(b32, dino_reg, tmp_path):
    from safetensors.torch import save_file

    # open_clip: a full-CLIP style checkpoint (keys visual.*, plus a text key that must be dropped), as .pt
    sd = {f"visual.{k}": v.clone() for k, v in b32.visual.state_dict().items()}
    sd["token_embedding.weight"] = torch.zeros(3, 4)
    torch.save(sd, tmp_path / "clip.pt")
    loaded = load_backbone("open_clip:ViT-B-32", pretrained=str(tmp_path / "clip.pt"))
    for k, v in b32.visual.state_dict().items():
        assert torch.equal(loaded.visual.state_dict()[k], v), k
    # timm: a tower state dict as safetensors
    save_file({k: v.contiguous() for k, v in dino_reg.model.state_dict().items()}, str(tmp_path / "dino.safetensors"))
    loaded = load_backbone("timm:vit_small_patch14_reg4_dinov2", str(tmp_path / "dino.safetensors"), img_size=112)
    for k, v in dino_reg.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    # a checkpoint of another arch is a one-line error
    _one_line_error("does not fit", "timm:vit_small_patch14_reg4_dinov2", str(tmp_path / "dino.safetensors"))


def test_cp_lrp_conserves_on_a_bias_free_named_vit_b32(b32):
    from cafe_bench.attributors.lrp_patches import input_relevance
    from cafe_bench.sae import MatryoshkaBatchTopKSAE
    from cafe_bench.target import Target, Unit

    backbone = copy.deepcopy(b32)
    torch.manual_seed(1)
    sae = MatryoshkaBatchTopKSAE(768, 64, 4, [32, 64])
    with torch.no_grad():
        v = backbone.visual
        v.class_embedding.zero_()
        v.positional_embedding.zero_()
        for name, p in v.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        backbone.mean.zero_()
    images = torch.rand(2, 3, 224, 224)
    layer = 3
    with torch.no_grad():
        z = sae.encode(backbone.residuals(images, [layer])[layer][:, 1:])  # (B, P, m)
    units = []
    for b in range(len(images)):
        token, feature = divmod(int(z[b].argmax()), z.shape[-1])
        units.append(Unit(layer, feature, b, token))
    target = Target(backbone, {layer: sae}, units, images, torch.zeros_like(images), [0, 0])
    assert (target.clean > 0).all()
    relevance = input_relevance(target, "cp")
    total = relevance.sum(dim=(1, 2, 3))
    torch.testing.assert_close(total, target.clean, rtol=1e-4, atol=1e-6)
    # and the rule set matters on this model: plain input x gradient differs
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target.forward(x).sum(), x)
    assert not torch.allclose(relevance, images * grad, rtol=1e-3)


def test_a_pickled_or_truncated_checkpoint_is_refused_in_one_line(tmp_path):
    import collections

    from cafe_bench.errors import CafeBenchError
    from cafe_bench.models import load_backbone

    pickled = tmp_path / "whole.pt"
    torch.save({"state_dict": collections.Counter(a=1), "model": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(CafeBenchError, match="refusing to unpickle code"):
        load_backbone("open_clip:ViT-B-32", pretrained=pickled)
    truncated = tmp_path / "cut.pt"
    torch.save({"x": torch.zeros(3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:20])
    with pytest.raises(CafeBenchError, match="not a readable torch file"):
        load_backbone("open_clip:ViT-B-32", pretrained=truncated)


def test_archs_whose_towers_come_from_the_hub_are_refused_offline():
    from cafe_bench.errors import CafeBenchError
    from cafe_bench.models import load_backbone

    with pytest.raises(
        CafeBenchError, match="builds a tower from 'roberta-base', which open_clip fetches from the hub"
    ):
        load_backbone("open_clip:roberta-ViT-B-32")


def test_corrupt_checkpoints_and_non_state_dicts_are_one_line_errors(tmp_path):
    from cafe_bench.errors import CafeBenchError
    from cafe_bench.models import load_backbone

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01\x02")
    with pytest.raises(CafeBenchError, match="not a readable safetensors file"):
        load_backbone("open_clip:ViT-B-32", pretrained=bad)
    ints = tmp_path / "ints.pt"
    torch.save({1: torch.zeros(2)}, ints)
    with pytest.raises(CafeBenchError, match=r"does not hold a state dict \(names to tensors\)"):
        load_backbone("open_clip:ViT-B-32", pretrained=ints)
