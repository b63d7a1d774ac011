"""The ViT-Prisma SAE loader: files written in ViT-Prisma's layout (config.json + n_images_{N}.pt holding
{"cfg": <pickled config object>, "state_dict": ...}), encode against formulas written here, refusals."""

from __future__ import annotations

import json
import pickle
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch

from cafe_bench.sae import SAEFormatError, load_sae

D_IN, D_SAE = 16, 64
TRIPWIRE = {"setstate": False, "called": False}


# ---- a stand-in for vit_prisma's pickled config object: registered under vit_prisma's module path so that a
# loader which resolved pickled globals would find, build and run it ------------------------------------------


@dataclass
class VisionModelSAERunnerConfig:
    d_in: int = D_IN
    hook_point_layer: int = 9

    def __setstate__(self, state):
        TRIPWIRE["setstate"] = True
        raise RuntimeError("pickled config object was executed")


class _Payload:
    def __reduce__(self):
        return (_tripwire_call, ("payload",))


def _tripwire_call(arg):
    TRIPWIRE["called"] = True
    return arg


@pytest.fixture
def fake_vit_prisma(monkeypatch):
    """Register the throwaway classes as vit_prisma.sae.config (for saving, and present during loading too)."""
    mods = {name: types.ModuleType(name) for name in ("vit_prisma", "vit_prisma.sae", "vit_prisma.sae.config")}
    cfg_mod = mods["vit_prisma.sae.config"]
    for obj in (VisionModelSAERunnerConfig, _tripwire_call):
        obj.__module__ = cfg_mod.__name__
        setattr(cfg_mod, obj.__name__, obj)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    TRIPWIRE.update(setstate=False, called=False)
    yield
    VisionModelSAERunnerConfig.__module__ = _tripwire_call.__module__ = __name__


# ---- writing SAEs the way ViT-Prisma does --------------------------------------------------------------------


def _config(**over) -> dict:
    """Keys as VisionModelSAERunnerConfig.save_config writes them (asdict + torch.device/dtype wrappers)."""
    cfg = {
        "model_class_name": "HookedViT",
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "vit_model_cfg": None,
        "model_path": None,
        "hook_point_layer": 9,
        "layer_subtype": "hook_resid_post",
        "hook_point_head_index": None,
        "context_size": 50,
        "use_cached_activations": False,
        "use_patches_only": False,
        "cached_activations_path": "activations/x/blocks.9.hook_resid_post",
        "d_in": D_IN,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "cls_token_only": False,
        "max_grad_norm": 1.0,
        "initialization_method": "encoder_transpose_decoder",
        "normalize_activations": "layer_norm",
        "n_batches_in_buffer": 20,
        "store_batch_size": 32,
        "num_workers": 16,
        "num_epochs": 10,
        "total_training_images": 13000000,
        "total_training_tokens": 650000000,
        "image_size": 224,
        "device": {"__type__": "torch.device", "value": "cuda"},
        "seed": 42,
        "dtype": {"__type__": "torch.dtype", "value": "torch.float32"},
        "architecture": "standard",
        "verbose": False,
        "b_dec_init_method": "geometric_median",
        "expansion_factor": D_SAE // D_IN,
        "from_pretrained_path": None,
        "d_sae": D_SAE,
        "l1_coefficient": 1e-05,
        "lp_norm": 1,
        "lr": 0.0004,
        "use_ghost_grads": False,
        "checkpoint_path": "/checkpoints/abc",
    }
    cfg.update(over)
    return cfg


def _tensors(seed: int, gated: bool = False) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict(W_enc=torch.randn(D_IN, D_SAE, generator=g) * 0.5)
    if gated:
        out["b_gate"] = torch.randn(D_SAE, generator=g) * 0.3
        out["r_mag"] = torch.randn(D_SAE, generator=g) * 0.3
        out["b_mag"] = torch.randn(D_SAE, generator=g) * 0.3
    out["b_enc"] = torch.randn(D_SAE, generator=g) * 0.3
    out["W_dec"] = torch.randn(D_SAE, D_IN, generator=g) * 0.5
    out["b_dec"] = torch.randn(D_IN, generator=g) * 0.5
    return out


def _write(folder, cfg: dict, state: dict, n_images: int = 2600058, with_cfg_object: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    path = folder / f"n_images_{n_images}.pt"
    if with_cfg_object:  # SparseAutoencoder.save_model
        torch.save({"cfg": VisionModelSAERunnerConfig(), "extra": _Payload(), "state_dict": state}, path)
    else:
        torch.save(state, path)
    return path


def _x() -> torch.Tensor:
    """Rows of very different scales and offsets, so that layer-norm details (eps, unbiased std) matter."""
    g = torch.Generator().manual_seed(123)
    scales = torch.tensor([0.003, 0.01, 0.1, 1.0, 3.0, 10.0, 0.5, 2.0]).view(-1, 1)
    return torch.randn(8, D_IN, generator=g) * scales + torch.randn(8, 1, generator=g)


# ---- reference formulas (ViT-Prisma's encode, written out with plain torch ops) ---------------------------------


def _ref_in(x, t, norm):
    if norm == "layer_norm":
        mu = x.sum(-1, keepdim=True) / x.shape[-1]
        var = ((x - mu) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1)
        x = (x - mu) / (var.sqrt() + 1e-5)
    elif norm == "constant_norm_rescale":
        x = x * (x.shape[-1] ** 0.5) / (x**2).sum(-1, keepdim=True).sqrt()
    return x - t["b_dec"]


def _ref_encode(x, t, norm="layer_norm", act="relu", k=None):
    pre = _ref_in(x, t, norm) @ t["W_enc"] + t["b_enc"]
    if act == "relu":
        return pre.clamp(min=0)
    if act == "tanh-relu":
        return torch.tanh(pre.clamp(min=0))
    kth = pre.sort(dim=-1, descending=True).values[:, k - 1 : k]
    return torch.where(pre >= kth, pre.clamp(min=0), torch.zeros_like(pre))


def _ref_gated(x, t, norm="layer_norm"):
    s = _ref_in(x, t, norm)
    gate = (s @ t["W_enc"] + t["b_gate"] > 0).float()
    return gate * (s @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]).clamp(min=0)


# ---- tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "act", "k"),
    [("layer_norm", "relu", None), ("constant_norm_rescale", "topk", 5), ("none", "tanh-relu", None)],
)
def test_encode_matches_vit_prisma_formula(tmp_path, fake_vit_prisma, norm, act, k):
    t = _tensors(0)
    cfg = _config(normalize_activations=norm, activation_fn_str=act, activation_fn_kwargs={"k": k} if k else {})
    _write(tmp_path / "sae", cfg, t)
    sae = load_sae(tmp_path / "sae")
    assert sae.format == "vit_prisma" and (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    x = _x()
    z = sae.encode(x)
    ref = _ref_encode(x, t, norm, act, k)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-6)
    assert (ref > 0).any(dim=1).all(), "every row should have an active feature, or the comparison is vacuous"
    if act == "topk":
        assert ((z != 0).sum(1) <= k).all()
        assert ((_ref_in(x, t, norm) @ t["W_enc"] + t["b_enc"] > 0).sum(1) > k).all(), "top-k must drop something"
    if norm == "layer_norm":
        assert "std_unbiased" in sae.normalisation and "b_dec" in sae.normalisation
    assert norm in sae.normalisation
    assert not TRIPWIRE["setstate"] and not TRIPWIRE["called"]


def test_gated_encode(tmp_path, fake_vit_prisma):
    t = _tensors(1, gated=True)
    _write(tmp_path / "g", _config(architecture="gated"), t)
    sae = load_sae(tmp_path / "g")
    x = _x()
    ref = _ref_gated(x, t)
    torch.testing.assert_close(sae.encode(x), ref, rtol=1e-5, atol=1e-6)
    gate_only = (_ref_in(x, t, "layer_norm") @ t["W_enc"] + t["b_gate"] > 0).float()
    assert ((ref == 0) & (gate_only == 0) & ((_ref_in(x, t, "layer_norm") @ t["W_enc"] + t["b_mag"]) > 0)).any()
    xs, fs = x.repeat_interleave(D_SAE, 0), torch.arange(D_SAE).repeat(len(x))  # every (row, feature) pair
    torch.testing.assert_close(sae.encode_feature(xs, fs), ref.flatten(), rtol=1e-5, atol=1e-6)


def test_pickled_config_object_is_never_executed(tmp_path, fake_vit_prisma):
    path = _write(tmp_path / "sae", _config(), _tensors(0))
    with pytest.raises(pickle.UnpicklingError):  # the file really needs more than weights_only allows
        torch.load(path, weights_only=True)
    with pytest.raises(RuntimeError, match="executed"):  # and a plain unpickle would run the config's code
        torch.load(path, weights_only=False)
    TRIPWIRE.update(setstate=False, called=False)
    sae = load_sae(tmp_path / "sae")
    assert TRIPWIRE == {"setstate": False, "called": False}
    torch.testing.assert_close(sae.encode(_x()), _ref_encode(_x(), _tensors(0)), rtol=1e-5, atol=1e-6)


def test_plain_state_dict_checkpoint(tmp_path):
    t = _tensors(2)
    _write(tmp_path / "sae", _config(), t, with_cfg_object=False)
    torch.testing.assert_close(load_sae(tmp_path / "sae").encode(_x()), _ref_encode(_x(), t), rtol=1e-5, atol=1e-6)


def test_encode_feature_column_and_gradient(tmp_path, fake_vit_prisma):
    for act, k in (("relu", None), ("topk", 5)):
        t = _tensors(3)
        d = tmp_path / act
        _write(d, _config(activation_fn_str=act, activation_fn_kwargs={"k": k} if k else {}), t)
        sae = load_sae(d)
        x = _x().requires_grad_(True)
        z = sae.encode(x)
        f = z.argmax(1)
        assert (z.gather(1, f.view(-1, 1)) > 0).all()
        zf = sae.encode_feature(x, f)
        torch.testing.assert_close(zf, z.gather(1, f.view(-1, 1)).squeeze(1))
        (g,) = torch.autograd.grad(zf.sum(), x)
        (g_ref,) = torch.autograd.grad(z.gather(1, f.view(-1, 1)).sum(), x)
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, g_ref)


def test_largest_checkpoint_and_sniffing(tmp_path, fake_vit_prisma):
    old, new = _tensors(10), _tensors(11)
    d = tmp_path / "sae"
    _write(d, _config(), old, n_images=520028)
    _write(d, _config(), new, n_images=2600058)
    torch.save(torch.zeros(D_SAE), d / "n_images_9999999_log_feature_sparsity.pt")  # not a checkpoint
    x = _x()
    for where in (d, d / "config.json"):
        torch.testing.assert_close(load_sae(where).encode(x), _ref_encode(x, new), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(load_sae(d / "n_images_520028.pt").encode(x), _ref_encode(x, old), rtol=1e-5, atol=1e-6)
    from cafe_bench.sae.formats.vit_prisma import sniff

    assert sniff(d) and sniff(d / "config.json")
    (tmp_path / "only_cfg").mkdir()
    (tmp_path / "only_cfg" / "config.json").write_text("{}")
    assert not sniff(tmp_path / "only_cfg")
    (tmp_path / "only_ckpt").mkdir()
    torch.save(_tensors(0), tmp_path / "only_ckpt" / "n_images_5.pt")
    assert not sniff(tmp_path / "only_ckpt")


@pytest.mark.parametrize(
    ("over", "tokens"), [({"cls_token_only": True}, "cls"), ({"use_patches_only": True}, "patches"), ({}, "all")]
)
def test_hook_is_recorded(tmp_path, fake_vit_prisma, over, tokens):
    _write(tmp_path / "sae", _config(hook_point_layer=7, **over), _tensors(0))
    sae = load_sae(tmp_path / "sae")
    assert (sae.hook.layer, sae.hook.name, sae.hook.tokens) == (7, "blocks.7.hook_resid_post", tokens)
    assert sae.describe()["hook_layer"] == 7


def _refusal(path) -> str:
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_refuses_mlp_out_hook(tmp_path, fake_vit_prisma):
    _write(tmp_path / "sae", _config(layer_subtype="hook_mlp_out"), _tensors(0))
    assert "blocks.9.hook_mlp_out" in _refusal(tmp_path / "sae")


def test_refuses_truncated_file(tmp_path, fake_vit_prisma):
    path = _write(tmp_path / "sae", _config(), _tensors(0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _refusal(tmp_path / "sae")
    assert path.name in msg and not TRIPWIRE["setstate"]


@pytest.mark.parametrize("cfg_object", [True, False])
def test_refuses_missing_or_misshapen_tensor(tmp_path, fake_vit_prisma, cfg_object):
    t = _tensors(0)
    del t["b_enc"]
    path = _write(tmp_path / "a", _config(), t, with_cfg_object=cfg_object)
    msg = _refusal(tmp_path / "a")
    assert "b_enc" in msg and path.name in msg
    t = _tensors(0)
    t["W_dec"] = t["W_dec"][:, :-1]
    path = _write(tmp_path / "b", _config(), t, with_cfg_object=cfg_object)
    msg = _refusal(tmp_path / "b")
    assert "W_dec" in msg and path.name in msg


def test_topk_applies_relu_to_kept_values(tmp_path, fake_vit_prisma):
    """Rows with fewer than k positive pre-activations: ViT-Prisma's TopK keeps k values and ReLUs them."""
    t = _tensors(4)
    t["b_enc"] = t["b_enc"] - 3.0
    _write(tmp_path / "sae", _config(activation_fn_str="topk", activation_fn_kwargs={"k": 8}), t)
    x = _x()
    pre = _ref_in(x, t, "layer_norm") @ t["W_enc"] + t["b_enc"]
    assert ((pre > 0).sum(1) < 8).any() and (pre > 0).any()
    z = load_sae(tmp_path / "sae").encode(x)
    torch.testing.assert_close(z, _ref_encode(x, t, "layer_norm", "topk", 8), rtol=1e-5, atol=1e-6)
    assert (z >= 0).all()


def test_only_its_own_files_are_sniffed_and_a_bad_d_sae_is_refused(tmp_path, fake_vit_prisma):
    folder = tmp_path / "sae"
    _write(folder, _config(), _tensors(0))
    (folder / "notes.txt").write_text("hello")
    from cafe_bench.sae.formats.vit_prisma import sniff

    assert not sniff(folder / "notes.txt") and sniff(folder) and sniff(folder / "config.json")
    cfg = _config()
    cfg["d_sae"] = "abc"
    _write(tmp_path / "bad", cfg, _tensors(0))
    with pytest.raises(SAEFormatError, match="d_sae 'abc' is not an integer"):
        load_sae(tmp_path / "bad")
