"""The SAELens loader: files laid out as SAELens 6.x writes them, encode checked against formulas written here
in numpy (float64), hook parsing, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cafe_bench.sae import SAEFormatError, load_sae

D_IN, D_SAE, K = 16, 64, 8
VERSION = "6.54.12"


def _metadata(arch: str, hook_name: str | None = "blocks.9.hook_resid_post") -> dict:
    """``cfg.json["metadata"]`` as SAELens 6.x's ``save_inference_model`` writes it after LLM-runner training."""
    return {
        "sae_lens_version": VERSION,
        "sae_lens_training_version": VERSION,
        "dataset_path": "imagenet-activations",
        "hook_name": hook_name,
        "model_name": "vit-b-16",
        "model_class_name": "HookedViT",
        "hook_head_index": None,
        "context_size": 197,
        "seqpos_slice": [None],
        "model_from_pretrained_kwargs": {},
        "prepend_bos": False,
        "exclude_special_tokens": False,
        "sequence_separator_token": None,
        "disable_concat_sequences": False,
        "training_architecture": arch,
        "training_architecture_details": {},
    }


def _cfg(arch: str = "standard", norm: str = "none", apply_b_dec: bool = True, **extra) -> dict:
    """A 6.x ``cfg.json``: the SAEConfig dataclass fields, ``metadata`` and ``architecture``."""
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "metadata": _metadata(arch),
        "architecture": arch,
    }
    if arch == "topk":
        cfg.update(k=K, rescale_acts_by_decoder_norm=False)
    cfg.update(extra)
    return cfg


def _tensors(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    t = {
        "W_enc": rnd(D_IN, D_SAE, scale=0.4),
        "W_dec": rnd(D_SAE, D_IN, scale=0.3),
        "b_dec": rnd(D_IN, scale=1.5),
    }
    if arch == "gated":
        t.update(b_gate=rnd(D_SAE, scale=0.5), r_mag=rnd(D_SAE, scale=0.3), b_mag=rnd(D_SAE, scale=0.5))
        # feature 0: gate pre-activation exactly 0 for every input (must be closed: SAELens uses > 0)
        t["W_enc"][:, 0] = 0.0
        t["b_gate"][0] = 0.0
        t["b_mag"][0] = 1.0
    else:
        t["b_enc"] = rnd(D_SAE, scale=0.5)
    if arch == "jumprelu":
        t["threshold"] = rnd(D_SAE, scale=0.5).abs() + 0.2
        # feature 0: pre-activation exactly equal to its threshold (SAELens: pre > threshold, so 0);
        # feature 1: just above it
        t["W_enc"][:, :2] = 0.0
        t["b_enc"][:2] = 0.5
        t["threshold"][0] = 0.5
        t["threshold"][1] = 0.25
    return t


def _write(directory: Path, cfg: dict, tensors: dict, scaler: float | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "sae_weights.safetensors"))
    if scaler is not None:
        (directory / "activation_scaler.json").write_text(
            json.dumps({"scaling_factor": scaler, "has_whitening": False})
        )
    return directory


def _inputs(seed: int = 1, n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 2.0 + 0.5


# -- the formulas, written independently in numpy ------------------------------------------------------------


def _np(t: dict) -> dict:
    return {k: v.double().numpy() for k, v in t.items()}


def ref_norm(x, norm: str, scale: float | None = None):
    if norm == "none":
        return x
    if norm == "constant_norm_rescale":
        return x * np.sqrt(D_IN) / np.linalg.norm(x, axis=1, keepdims=True)
    if norm == "layer_norm":
        xc = x - x.mean(axis=1, keepdims=True)
        return xc / (np.std(xc, axis=1, ddof=1, keepdims=True) + 1e-5)
    if norm == "expected_average_only_in":
        return x * scale
    raise AssertionError(norm)


def ref_encode(arch, t, x, norm="none", apply_b_dec=True, scale=None, rescale=False, k=K):
    h = ref_norm(x.double().numpy(), norm, scale)
    if apply_b_dec:
        h = h - t["b_dec"]
    if arch == "gated":
        gate = (h @ t["W_enc"] + t["b_gate"]) > 0
        return gate * np.maximum(h @ (t["W_enc"] * np.exp(t["r_mag"])) + t["b_mag"], 0.0)
    pre = h @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        return np.maximum(pre, 0.0)
    if arch == "jumprelu":
        return np.where(pre > t["threshold"], np.maximum(pre, 0.0), 0.0)
    if rescale:
        pre = pre * np.linalg.norm(t["W_dec"], axis=1)
    out = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[:k]
        out[i, top] = np.maximum(row[top], 0.0)
    return out


ARCHS = ["standard", "gated", "topk", "jumprelu"]
NORMS = ["none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"]
SCALE = 0.37


def _load(tmp_path, arch, norm="none", apply_b_dec=True, seed=0, **extra):
    t = _tensors(arch, seed)
    d = _write(tmp_path / f"{arch}-{norm}-{apply_b_dec}", _cfg(arch, norm, apply_b_dec, **extra), t, scaler=SCALE)
    return load_sae(d), _np(t)


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_matches_saelens_formula(tmp_path, arch, norm, apply_b_dec):
    sae, t = _load(tmp_path, arch, norm, apply_b_dec)
    assert not sae.training and sae.format == "saelens" and (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    x = _inputs()
    z = sae.encode(x).detach().double().numpy()
    want = ref_encode(arch, t, x, norm, apply_b_dec, SCALE)
    assert z.shape == (12, D_SAE)
    np.testing.assert_allclose(z, want, atol=2e-5, rtol=1e-5)
    assert (want > 0).sum() >= 12  # the comparison is not vacuous
    # a plausible bug is visibly different: b_dec applied the other way round, or W_dec.T used as encoder
    assert np.abs(ref_encode(arch, t, x, norm, not apply_b_dec, SCALE) - want).max() > 1e-2
    wrong = dict(t, W_enc=t["W_dec"].T)
    assert np.abs(ref_encode(arch, wrong, x, norm, apply_b_dec, SCALE) - want).max() > 1e-2
    if arch == "topk":
        assert ((z != 0).sum(axis=1) <= K).all()
    assert ("- b_dec" in sae.normalisation) == apply_b_dec


def test_jumprelu_threshold_is_strict_and_gate_is_strict(tmp_path):
    x = _inputs()
    sae, _ = _load(tmp_path, "jumprelu")
    z = sae.encode(x).detach()
    assert torch.all(z[:, 0] == 0)  # pre == threshold exactly: closed (>= would give 0.5)
    assert torch.allclose(z[:, 1], torch.full((12,), 0.5))
    gated, t = _load(tmp_path, "gated")
    assert torch.all(gated.encode(x)[:, 0] == 0)  # gate pre-activation 0: closed although magnitude is 1
    assert np.all(np.maximum(t["b_mag"][0], 0) > 0)


def test_topk_relu_after_selection(tmp_path):
    """With few positive pre-activations, the k selected ones include negatives, which ReLU zeroes."""
    t = _tensors("topk")
    t["b_enc"] = torch.full((D_SAE,), -30.0)
    t["b_enc"][:3] = 30.0
    sae = load_sae(_write(tmp_path / "neg", _cfg("topk"), t))
    x = _inputs()
    z = sae.encode(x).detach()
    assert (z >= 0).all() and ((z > 0).sum(dim=1) < K).all()
    np.testing.assert_allclose(z.double().numpy(), ref_encode("topk", _np(t), x), atol=2e-5)


def test_topk_rescale_acts_by_decoder_norm(tmp_path):
    sae, t = _load(tmp_path, "topk", rescale_acts_by_decoder_norm=True)
    x = _inputs()
    want = ref_encode("topk", t, x, rescale=True)
    np.testing.assert_allclose(sae.encode(x).detach().double().numpy(), want, atol=2e-5, rtol=1e-5)
    assert np.abs(ref_encode("topk", t, x, rescale=False) - want).max() > 1e-2
    # decode undoes the rescaling: z / ||W_dec|| @ W_dec + b_dec
    z = sae.encode(x)
    recon = (want / np.linalg.norm(t["W_dec"], axis=1)) @ t["W_dec"] + t["b_dec"]
    np.testing.assert_allclose(sae.decode(z).detach().double().numpy(), recon, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_forward_reconstructs_in_input_units(tmp_path, norm):
    sae, t = _load(tmp_path, "standard", norm)
    x = _inputs()
    z = ref_encode("standard", t, x, norm, True, SCALE)
    out = z @ t["W_dec"] + t["b_dec"]
    xn = x.double().numpy()
    if norm == "constant_norm_rescale":
        out = out / (np.sqrt(D_IN) / np.linalg.norm(xn, axis=1, keepdims=True))
    elif norm == "layer_norm":
        mu = xn.mean(axis=1, keepdims=True)
        out = out * np.std(xn - mu, axis=1, ddof=1, keepdims=True) + mu
    elif norm == "expected_average_only_in":
        out = out / SCALE  # the trainer's fold: W_dec /= s, b_dec /= s
    np.testing.assert_allclose(sae(x).detach().double().numpy(), out, atol=1e-4, rtol=1e-5)
    if norm in ("constant_norm_rescale", "layer_norm"):
        with pytest.raises(ValueError, match="per-input statistics"):
            sae.decode(torch.from_numpy(z).float())  # statistics were used up by forward


@pytest.mark.parametrize("norm", ["none", "layer_norm"])
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_feature_is_the_column_with_gradient(tmp_path, arch, norm):
    sae, _ = _load(tmp_path, arch, norm)
    x = _inputs(seed=3)
    codes = sae.encode(x).detach()
    features = codes.argmax(dim=1)  # active features, so the gradient is not trivially zero
    features[::3] = torch.arange(len(features[::3])) + 2  # and some arbitrary ones
    features[:2] = torch.tensor([0, 1])  # the jumprelu / gated ties at the threshold
    xg = x.clone().requires_grad_(True)
    got = sae.encode_feature(xg, features)
    assert got.shape == (12,)
    torch.testing.assert_close(got.detach(), codes.gather(1, features.view(-1, 1)).squeeze(1), atol=2e-5, rtol=1e-5)
    got.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    xr = x.clone().requires_grad_(True)
    sae.encode(xr).gather(1, features.view(-1, 1)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=2e-5, rtol=1e-4)


# -- hooks and old configs ------------------------------------------------------------------------------------


def test_hook_from_6x_metadata(tmp_path):
    sae, _ = _load(tmp_path, "standard")
    assert (sae.hook.layer, sae.hook.name) == (9, "blocks.9.hook_resid_post")
    assert sae.describe()["hook_layer"] == 9


def test_bare_save_model_cfg_has_no_hook(tmp_path):
    cfg = _cfg()
    cfg["metadata"] = {"sae_lens_version": VERSION, "sae_lens_training_version": VERSION}
    sae = load_sae(_write(tmp_path / "bare", cfg, _tensors("standard")))
    assert sae.hook.layer is None and sae.hook.name is None


def test_resid_pre_is_previous_block_output(tmp_path):
    cfg = _cfg()
    cfg["metadata"]["hook_name"] = "blocks.4.hook_resid_pre"
    sae = load_sae(_write(tmp_path / "pre", cfg, _tensors("standard")))
    assert (sae.hook.layer, sae.hook.name) == (3, "blocks.4.hook_resid_pre")


def test_old_style_cfg_with_top_level_hook(tmp_path):
    """A pre-6.0 cfg: top-level hook fields, boolean normalize_activations, no architecture or b_dec flag."""
    cfg = {
        "model_name": "gpt2-small",
        "hook_name": "blocks.5.hook_resid_post",
        "hook_layer": 5,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": False,
        "context_size": 128,
        "sae_lens_training_version": "3.13.0",
    }
    t = _tensors("standard")
    sae = load_sae(_write(tmp_path / "old", cfg, t))
    assert (sae.hook.layer, sae.hook.name) == (5, "blocks.5.hook_resid_post")
    x = _inputs()
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), ref_encode("standard", _np(t), x), atol=2e-5)


def test_old_style_topk_and_hook_point(tmp_path):
    cfg = {
        "hook_point": "blocks.2.hook_resid_pre",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": 5},
        "apply_b_dec_to_input": False,
        "normalize_activations": None,
    }
    t = _tensors("topk")
    sae = load_sae(_write(tmp_path / "oldtopk", cfg, t))
    assert (sae.hook.layer, sae.hook.name) == (1, "blocks.2.hook_resid_pre")
    x = _inputs()
    want = ref_encode("topk", _np(t), x, apply_b_dec=False, k=5)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), want, atol=2e-5)


def test_sniff_accepts_directory_and_its_files(tmp_path):
    from cafe_bench.sae.formats.saelens import sniff

    d = _write(tmp_path / "s", _cfg(), _tensors("standard"))
    assert sniff(d) and sniff(d / "cfg.json") and sniff(d / "sae_weights.safetensors")
    assert load_sae(d / "cfg.json").hook.layer == 9
    (tmp_path / "only_cfg").mkdir()
    (tmp_path / "only_cfg" / "cfg.json").write_text("{}")
    assert not sniff(tmp_path / "only_cfg") and not sniff(tmp_path / "nothing")


# -- refusals --------------------------------------------------------------------------------------------------


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_truncated_safetensors(tmp_path):
    d = _write(tmp_path / "trunc", _cfg(), _tensors("standard"))
    w = d / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    _refused(d, "sae_weights.safetensors", "truncated")


def test_missing_tensor(tmp_path):
    t = _tensors("jumprelu")
    del t["threshold"]
    _refused(_write(tmp_path / "miss", _cfg("jumprelu"), t), "sae_weights.safetensors", "threshold")


@pytest.mark.parametrize(
    "name,bad", [("W_enc", (D_SAE, D_IN)), ("W_dec", (D_IN, D_SAE)), ("b_dec", (D_SAE,)), ("b_enc", (D_IN,))]
)
def test_wrong_shape(tmp_path, name, bad):
    t = _tensors("standard")
    t[name] = torch.zeros(bad)
    _refused(_write(tmp_path / f"shape-{name}", _cfg(), t), "sae_weights.safetensors", name, str(bad))


def test_unexpected_tensor_and_scaling_factor(tmp_path):
    t = dict(_tensors("standard"), b_gate=torch.zeros(D_SAE))
    _refused(_write(tmp_path / "extra", _cfg(), t), "b_gate")
    t = dict(_tensors("standard"), scaling_factor=torch.full((D_SAE,), 2.0))
    _refused(_write(tmp_path / "sf", _cfg(), t), "scaling_factor")
    t = dict(_tensors("standard"), scaling_factor=torch.ones(D_SAE))  # SAELens drops an all-ones one
    assert load_sae(_write(tmp_path / "sf1", _cfg(), t)).d_sae == D_SAE


@pytest.mark.parametrize("arch", ["abstopk", "transcoder", "nonsense"])
def test_unknown_architecture(tmp_path, arch):
    _refused(_write(tmp_path / arch, _cfg(arch), _tensors("standard")), "cfg.json", arch)


def test_batchtopk_training_checkpoint(tmp_path):
    _refused(_write(tmp_path / "btk", _cfg("batchtopk"), _tensors("standard")), "cfg.json", "jumprelu")


@pytest.mark.parametrize("norm", ["covariance_whitening", "bogus"])
def test_unknown_normalisation(tmp_path, norm):
    _refused(_write(tmp_path / norm, _cfg(norm=norm), _tensors("standard")), "cfg.json", norm)


def test_expected_average_without_scaler_refused(tmp_path):
    d = _write(tmp_path / "eao", _cfg(norm="expected_average_only_in"), _tensors("standard"))
    _refused(d, "cfg.json", "activation_scaler.json")


def test_reshape_hook_z_refused(tmp_path):
    cfg = _cfg(reshape_activations="hook_z")
    _refused(_write(tmp_path / "z", cfg, _tensors("standard")), "cfg.json", "hook_z")


@pytest.mark.parametrize(
    "hook",
    ["blocks.9.hook_mlp_out", "blocks.9.hook_attn_out", "blocks.9.hook_resid_mid", "blocks.0.hook_resid_pre"],
)
def test_non_residual_hook_refused(tmp_path, hook):
    cfg = _cfg()
    cfg["metadata"]["hook_name"] = hook
    _refused(_write(tmp_path / hook, cfg, _tensors("standard")), "cfg.json", hook)


def test_head_index_and_inconsistent_layer_refused(tmp_path):
    cfg = _cfg()
    cfg["metadata"]["hook_head_index"] = 3
    _refused(_write(tmp_path / "head", cfg, _tensors("standard")), "hook_head_index")
    cfg = _cfg()
    cfg["metadata"]["hook_layer"] = 7
    _refused(_write(tmp_path / "lay", cfg, _tensors("standard")), "hook_layer 7")


def test_a_non_integer_hook_layer_is_a_one_line_refusal(tmp_path):
    cfg = _cfg("standard")
    cfg["metadata"]["hook_layer"] = "x"
    _write(tmp_path / "s", cfg, _tensors("standard"))
    with pytest.raises(SAEFormatError, match="hook_layer 'x' is not an integer"):
        load_sae(tmp_path / "s")


def test_the_sae_command_refuses_a_wrong_width_naming_both_sizes(tmp_path, capsys):
    from cafe_bench.cli import main

    _write(tmp_path / "s", _cfg("standard"), _tensors("standard"))
    assert main(["sae", str(tmp_path / "s"), "--d-model", str(D_IN)]) == 0
    assert "saelens" in capsys.readouterr().out
    assert main(["sae", str(tmp_path / "s"), "--d-model", "1024"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"SAE d_in {D_IN} does not match the model's width 1024" in err
