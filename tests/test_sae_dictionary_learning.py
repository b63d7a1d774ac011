"""Loader of saprmarks/dictionary_learning SAEs: files written as the library writes them (``torch.save`` of the
state dict as ae.pt, ``{"trainer": trainer.config}`` as config.json), codes compared with formulas written here
from the library's source."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cafe_bench.sae import SAE, SAEFormatError, list_sae_formats, load_sae
from cafe_bench.sae.formats import dictionary_learning as dl

D, M, K = 16, 64, 4
CLASSES = ["BatchTopKSAE", "MatryoshkaBatchTopKSAE", "AutoEncoderTopK", "AutoEncoder", "JumpReluAutoEncoder"]
TRAINER_CLASS = {
    "BatchTopKSAE": "BatchTopKTrainer",
    "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer",
    "AutoEncoderTopK": "TopKTrainer",
    "AutoEncoder": "StandardTrainerAprilUpdate",
    "JumpReluAutoEncoder": "JumpReluTrainer",
}


def make_state(dict_class: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the library's key names, shapes and buffer dtypes; random, seeded."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    if dict_class in ("BatchTopKSAE", "AutoEncoderTopK"):
        return {
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.5, dtype=torch.float32),
            "decoder.weight": randn(D, M, scale=0.3),
            "encoder.weight": randn(M, D, scale=0.3),
            "encoder.bias": randn(M, scale=0.2),
            "b_dec": randn(D, scale=0.5),
        }
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.5, dtype=torch.float32),
            "group_sizes": torch.tensor([8, 24, 32]),
            "W_enc": randn(D, M, scale=0.3),
            "b_enc": randn(M, scale=0.2),
            "W_dec": randn(M, D, scale=0.3),
            "b_dec": randn(D, scale=0.5),
        }
    if dict_class == "AutoEncoder":
        return {
            "bias": randn(D, scale=0.5),
            "encoder.weight": randn(M, D, scale=0.3),
            "encoder.bias": randn(M, scale=0.2),
            "decoder.weight": randn(D, M, scale=0.3),  # columns not unit norm: from_pretrained rescales
        }
    if dict_class == "JumpReluAutoEncoder":
        return {
            "W_enc": randn(D, M, scale=0.3),
            "b_enc": randn(M, scale=0.2),
            "W_dec": randn(M, D, scale=0.3),
            "b_dec": randn(D, scale=0.5),
            "threshold": randn(M, scale=0.2).abs() + 0.2,
        }
    raise ValueError(dict_class)


def make_trainer_config(dict_class: str, **extra) -> dict:
    cfg = {
        "trainer_class": TRAINER_CLASS[dict_class],
        "dict_class": dict_class,
        "lr": 1e-4,
        "steps": 1000,
        "seed": 0,
        "activation_dim": D,
        "dict_size": M,
        "device": "cuda:0",
        "layer": 3,
        "lm_name": "vit_tiny",
        "wandb_name": f"{dict_class}_trainer_0",
        "submodule_name": "resid_post_layer_3",
    }
    if dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE", "AutoEncoderTopK"):
        cfg.update(k=K, threshold_beta=0.999, threshold_start_step=1000, auxk_alpha=1 / 32)
    if dict_class == "MatryoshkaBatchTopKSAE":
        cfg.update(group_fractions=[0.125, 0.375, 0.5], group_weights=None, group_sizes=[8, 24, 32])
    cfg.update(extra)
    return cfg


def write_sae(directory, dict_class: str, state: dict | None = None, **config_extra):
    """As trainSAE writes a trainer's directory."""
    directory.mkdir(parents=True, exist_ok=True)
    state = make_state(dict_class) if state is None else state
    with open(directory / "config.json", "w") as f:
        json.dump({"trainer": make_trainer_config(dict_class, **config_extra), "buffer": {"d_submodule": D}}, f)
    torch.save({k: v.cpu() for k, v in state.items()}, directory / "ae.pt")
    return directory


def inputs(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def reference_encode(dict_class: str, s: dict, x: torch.Tensor, subtract_b_dec=True, ge=False) -> torch.Tensor:
    """Independent formulas transcribed from dictionary_learning's encode (and from_pretrained for AutoEncoder);
    ``subtract_b_dec=False`` and ``ge=True`` are the two mistakes the tests must catch."""
    cmp = torch.ge if ge else torch.gt
    if dict_class in ("BatchTopKSAE", "AutoEncoderTopK"):
        xin = x - s["b_dec"] if subtract_b_dec else x
        post = torch.relu(xin @ s["encoder.weight"].T + s["encoder.bias"])
        if dict_class == "BatchTopKSAE":
            return post * cmp(post, s["threshold"]).float()
        vals, idx = post.topk(int(s["k"]), dim=-1)
        return torch.zeros_like(post).scatter(-1, idx, vals)
    if dict_class == "MatryoshkaBatchTopKSAE":
        xin = x - s["b_dec"] if subtract_b_dec else x
        post = torch.relu(xin @ s["W_enc"] + s["b_enc"])
        return post * cmp(post, s["threshold"]).float()
    if dict_class == "AutoEncoder":
        norms = s["decoder.weight"].norm(dim=0)
        xin = x - s["bias"] if subtract_b_dec else x
        return torch.relu(xin @ (s["encoder.weight"] * norms[:, None]).T + s["encoder.bias"] * norms)
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        return torch.relu(pre * cmp(pre, s["threshold"]).float())
    raise ValueError(dict_class)


def reference_decode(dict_class: str, s: dict, z: torch.Tensor) -> torch.Tensor:
    if dict_class in ("BatchTopKSAE", "AutoEncoderTopK"):
        return z @ s["decoder.weight"].T + s["b_dec"]
    if dict_class == "AutoEncoder":
        w = s["decoder.weight"] / s["decoder.weight"].norm(dim=0)
        return z @ w.T + s["bias"]
    return z @ s["W_dec"] + s["b_dec"]


def test_registered():
    assert "dictionary_learning" in list_sae_formats()


@pytest.mark.parametrize("dict_class", CLASSES)
def test_encode_decode_match_library_formula(tmp_path, dict_class):
    state = make_state(dict_class)
    d = write_sae(tmp_path / "trainer_0", dict_class, state)
    assert dl.sniff(d) and dl.sniff(d / "ae.pt")
    sae = load_sae(d)
    assert isinstance(sae, SAE) and not sae.training
    assert (sae.format, sae.d_in, sae.d_sae, sae.dict_class) == ("dictionary_learning", D, M, dict_class)
    assert (sae.hook.layer, sae.hook.name, sae.hook.tokens) == (3, "resid_post_layer_3", None)
    assert sae.describe()["normalisation"] == sae.normalisation
    x = inputs()
    want = reference_encode(dict_class, state, x)
    got = sae.encode(x)
    assert got.shape == (12, M)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the codes are not trivial: some features fire, and the threshold / top-k removes some positive ones
    assert (want > 0).any()
    if dict_class != "AutoEncoder":
        assert ((want == 0) & (reference_encode("AutoEncoder", _as_plain(dict_class, state), x) > 0)).any()
    torch.testing.assert_close(sae.decode(got), reference_decode(dict_class, state, want), atol=1e-5, rtol=1e-5)
    # the ae.pt inside the directory loads the same SAE
    torch.testing.assert_close(load_sae(d / "ae.pt").encode(x), got)


def _as_plain(dict_class: str, s: dict) -> dict:
    """The same weights read as a plain ReLU SAE with unit-norm decoder (to show that masking happens)."""
    if "W_enc" in s:
        enc_w, enc_b, b = s["W_enc"].T, s["b_enc"], s["b_dec"]
    else:
        enc_w, enc_b, b = s["encoder.weight"], s["encoder.bias"], s.get("b_dec", s.get("bias"))
    if dict_class == "JumpReluAutoEncoder":
        b = torch.zeros(D)
    return {"encoder.weight": enc_w, "encoder.bias": enc_b, "bias": b, "decoder.weight": torch.ones(D, M) / D**0.5}


@pytest.mark.parametrize("dict_class", CLASSES)
def test_encode_feature_is_the_column_with_gradient(tmp_path, dict_class):
    sae = load_sae(write_sae(tmp_path / "sae", dict_class))
    elementwise = dict_class != "AutoEncoderTopK"
    x = inputs(20, seed=3).requires_grad_(True)
    codes = sae.encode(x)
    # for each row, a feature that fires (first half of rows) or one that does not (second half)
    active = codes.detach() > 0
    feats = torch.where(active.any(1), active.float().argmax(1), torch.zeros(20, dtype=torch.long))
    feats[10:] = torch.arange(10) * 5
    got = sae.encode_feature(x, feats)
    assert got.shape == (20,)
    torch.testing.assert_close(got, codes.gather(1, feats[:, None]).squeeze(1), atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(got.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    (want_grad,) = torch.autograd.grad(codes.gather(1, feats[:, None]).sum(), x)
    torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=1e-5)
    if elementwise:  # one row at a time gives the same value: no batch dependence
        torch.testing.assert_close(sae.encode_feature(x[:1], feats[:1]), got[:1])


@pytest.mark.parametrize("dict_class", CLASSES)
def test_forgetting_b_dec_would_be_caught(tmp_path, dict_class):
    state = make_state(dict_class)
    sae = load_sae(write_sae(tmp_path / "sae", dict_class, state))
    x = inputs()
    got = sae.encode(x)
    wrong = reference_encode(dict_class, state, x, subtract_b_dec=False)
    if dict_class == "JumpReluAutoEncoder":  # the library's JumpReLU files do not subtract b_dec
        torch.testing.assert_close(got, wrong, atol=1e-5, rtol=1e-5)
        with_b_dec = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
        with_b_dec = with_b_dec * (with_b_dec > state["threshold"])
        assert (got - with_b_dec).abs().max() > 0.05
    else:
        assert (got - wrong).abs().max() > 0.05


@pytest.mark.parametrize("dict_class", ["BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"])
def test_threshold_is_strict(tmp_path, dict_class):
    """A pre-activation exactly at the threshold is zero (``>``), one above it passes; ``>=`` would differ."""
    state = make_state(dict_class)
    j, thr = 7, 1.25
    # feature j reads only input dim 0 with weight 1: pre = (x0 - b_dec0) + 0.5, exact in float32
    if "encoder.weight" in state:
        state["encoder.weight"][j] = 0.0
        state["encoder.weight"][j, 0] = 1.0
        state["encoder.bias"][j] = 0.5
    else:
        state["W_enc"][:, j] = 0.0
        state["W_enc"][0, j] = 1.0
        state["b_enc"][j] = 0.5
    b0 = 0.0 if dict_class == "JumpReluAutoEncoder" else 0.25
    state["b_dec"][0] = 0.25
    if dict_class == "JumpReluAutoEncoder":
        state["threshold"][j] = thr
    else:
        state["threshold"] = torch.tensor(thr)
    sae = load_sae(write_sae(tmp_path / "sae", dict_class, state))
    x = inputs(3)
    x[0, 0] = thr - 0.5 + b0  # pre == threshold
    x[1, 0] = thr + b0  # pre == threshold + 0.5
    codes = sae.encode(x)
    assert codes[0, j] == 0 and codes[1, j] == pytest.approx(thr + 0.5)
    feats = torch.full((3,), j)
    assert sae.encode_feature(x, feats)[0] == 0
    assert reference_encode(dict_class, state, x, ge=True)[0, j] == thr  # what ">=" would give
    torch.testing.assert_close(codes, reference_encode(dict_class, state, x), atol=1e-5, rtol=1e-5)


def test_untracked_threshold_is_plain_relu(tmp_path):
    """Before threshold_start_step the saved threshold is the initial -1: every positive pre-activation passes."""
    state = make_state("BatchTopKSAE")
    state["threshold"] = torch.tensor(-1.0)
    sae = load_sae(write_sae(tmp_path / "sae", "BatchTopKSAE", state))
    x = inputs()
    want = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    torch.testing.assert_close(sae.encode(x), want, atol=1e-5, rtol=1e-5)


def test_unit_norm_decoder_is_not_rescaled(tmp_path):
    state = make_state("AutoEncoder")
    state["decoder.weight"] = state["decoder.weight"] / state["decoder.weight"].norm(dim=0)
    sae = load_sae(write_sae(tmp_path / "sae", "AutoEncoder", state))
    x = inputs()
    want = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    torch.testing.assert_close(sae.encode(x), want, atol=1e-5, rtol=1e-5)


def test_norm_factor_in_config_is_not_applied_again(tmp_path):
    state = make_state("BatchTopKSAE")
    plain = load_sae(write_sae(tmp_path / "a", "BatchTopKSAE", state))
    with_nf = load_sae(write_sae(tmp_path / "b", "BatchTopKSAE", state, norm_factor=12.5))
    x = inputs()
    torch.testing.assert_close(with_nf.encode(x), plain.encode(x))
    assert "12.5" in with_nf.normalisation and "folded" in with_nf.normalisation
    assert with_nf.normalisation.startswith("x - b_dec")


def test_folded_norm_factor_equals_scaled_training_codes(tmp_path):
    """What trainSAE saves (scale_biases(norm_factor)) encodes raw x as norm_factor * codes of x / norm_factor."""
    s, nf = make_state("BatchTopKSAE"), 7.0
    folded = dict(s)
    folded["encoder.bias"], folded["b_dec"], folded["threshold"] = (
        s["encoder.bias"] * nf,
        s["b_dec"] * nf,
        s["threshold"] * nf,
    )
    sae = load_sae(write_sae(tmp_path / "sae", "BatchTopKSAE", folded))
    x = inputs() * nf
    torch.testing.assert_close(sae.encode(x), nf * reference_encode("BatchTopKSAE", s, x / nf), atol=1e-4, rtol=1e-5)


def _message(tmp_path, path):
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_refuses_truncated_file(tmp_path):
    d = write_sae(tmp_path / "sae", "BatchTopKSAE")
    data = (d / "ae.pt").read_bytes()
    (d / "ae.pt").write_bytes(data[: len(data) // 2])
    assert "ae.pt" in _message(tmp_path, d)


def test_refuses_pickled_module(tmp_path):
    d = write_sae(tmp_path / "sae", "BatchTopKSAE")
    torch.save(nn.Linear(D, M), d / "ae.pt")  # a whole module: needs unpickling code
    msg = _message(tmp_path, d)
    assert "ae.pt" in msg and "pickle" in msg


@pytest.mark.parametrize(
    ("dict_class", "key"), [("BatchTopKSAE", "threshold"), ("MatryoshkaBatchTopKSAE", "b_dec"), ("AutoEncoder", "bias")]
)
def test_refuses_missing_key(tmp_path, dict_class, key):
    state = make_state(dict_class)
    del state[key]
    msg = _message(tmp_path, write_sae(tmp_path / "sae", dict_class, state))
    assert "ae.pt" in msg and key in msg


def test_refuses_wrong_shape_and_mismatches(tmp_path):
    state = make_state("BatchTopKSAE")
    state["b_dec"] = torch.zeros(D + 1)
    msg = _message(tmp_path, write_sae(tmp_path / "a", "BatchTopKSAE", state))
    assert "b_dec" in msg and "ae.pt" in msg
    assert "dict_size" in _message(tmp_path, write_sae(tmp_path / "b", "BatchTopKSAE", dict_size=M * 2))
    assert "k=" in _message(tmp_path, write_sae(tmp_path / "c", "BatchTopKSAE", k=K + 1))
    state = make_state("MatryoshkaBatchTopKSAE")
    state["group_sizes"] = torch.tensor([8, 8])
    assert "group_sizes" in _message(tmp_path, write_sae(tmp_path / "d", "MatryoshkaBatchTopKSAE", state))
    state = make_state("BatchTopKSAE")
    state["W_enc"] = torch.zeros(D, M)
    assert "unexpected" in _message(tmp_path, write_sae(tmp_path / "e", "BatchTopKSAE", state))


def test_refuses_unknown_class(tmp_path):
    d = write_sae(tmp_path / "sae", "BatchTopKSAE")
    cfg = json.loads((d / "config.json").read_text())
    cfg["trainer"]["dict_class"] = "GatedAutoEncoder"
    (d / "config.json").write_text(json.dumps(cfg))
    msg = _message(tmp_path, d)
    assert "GatedAutoEncoder" in msg and "config.json" in msg


def test_refuses_training_backup(tmp_path):
    d = write_sae(tmp_path / "sae", "BatchTopKSAE")
    backup = {"step": 100, "ae": make_state("BatchTopKSAE"), "optimizer": {"state": {}, "param_groups": []}}
    torch.save({**backup, "config": make_trainer_config("BatchTopKSAE"), "norm_factor": 3.0}, d / "ae.pt")
    msg = _message(tmp_path, d)
    assert "backup" in msg and "ae.pt" in msg


def test_sniff(tmp_path):
    d = write_sae(tmp_path / "sae", "BatchTopKSAE")
    assert dl.sniff(d) and dl.sniff(d / "ae.pt")
    assert not dl.sniff(d / "config.json")
    (tmp_path / "empty").mkdir()
    assert not dl.sniff(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    torch.save(make_state("BatchTopKSAE"), other / "ae.pt")
    (other / "config.json").write_text(json.dumps({"d_in": D}))
    assert not dl.sniff(other)
    (other / "config.json").write_text("{not json")
    assert not dl.sniff(other)


def test_a_dict_class_that_is_not_a_name_is_refused(tmp_path):
    path = write_sae(tmp_path / "ae", "BatchTopKSAE")
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    doc = json.loads(config_path.read_text())
    doc["trainer"]["dict_class"] = ["AutoEncoder"]
    config_path.write_text(json.dumps(doc))
    with pytest.raises(SAEFormatError, match="dict_class \\['AutoEncoder'\\] is not supported"):
        load_sae(path)
