"""The saev loader: files written as saev's ``nn.dump`` writes them (JSON header line + torch.save of the state
dict in one file), for the legacy header and schemas 1A, 1B, 2, 3, 4, 5, both b_dec conventions; codes checked
against the formulas written here with plain torch ops."""

import json

import pytest
import torch

from cafe_bench.sae import loading
from cafe_bench.sae.loading import SAEFormatError, load_sae

D_IN, D_SAE, TOP_K = 16, 64, 8


def _weights(seed: int, threshold: float | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    state = {
        "W_dec": W_dec,
        "b_dec": torch.randn(D_IN, generator=g) * 2.0,
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.3,
    }
    if threshold is not None:
        state["activation.threshold"] = torch.tensor(threshold)
    return state


def _dump(path, header: dict, state: dict):
    """As saev's nn.dump: the header, a newline, then torch.save of the state dict into the same stream."""
    with open(path, "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode("utf-8"))
        torch.save(state, fd)
    return path


LEGACY = {
    "d_vit": D_IN,
    "exp_factor": D_SAE // D_IN,
    "sparsity_coeff": 0.0004,
    "n_reinit_samples": 524288,
    "ghost_grads": False,
    "remove_parallel_grads": True,
    "normalize_w_dec": True,
    "seed": 42,
}
_OLD_CFG = {k: v for k, v in LEGACY.items() if k not in ("sparsity_coeff", "ghost_grads")}


def _schema1a(cls, commit, **extra):
    return {"schema": 1, "cfg": {**_OLD_CFG, **extra}, "cls": cls, "commit": commit, "lib": "0.1.0"}


def _act(cls, **params):
    return {"cls": cls, "params": params}


def _schema(n, cfg_width, activation):
    cfg = {**cfg_width, "n_reinit_samples": 0, "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0}
    return {"schema": n, "cfg": {**cfg, "activation": activation}, "commit": "abc1234", "lib": "1.0.0"}


_S5_RELU = _act(
    "Relu",
    key="relu",
    sparsity=_act("L1Sparsity", key="l1-sparsity", coeff=0.0004),
    aux=_act("NoAux", key="no-aux"),
)
_S5_CFG = {
    "d_model": D_IN,
    "d_sae": D_SAE,
    "activation": _S5_RELU,
    "reinit_blend": 0.8,
    "reinit_enc_dec_tranpose": True,
    "remove_parallel_grads": True,
    "normalize_w_dec": True,
}

# (name, header, activation, b_dec subtracted, BatchTopK threshold)
CASES = [
    ("legacy", LEGACY, "relu", True, None),
    ("1A-relu", _schema1a("Relu", "5951e84"), "relu", True, None),
    ("1A-topk", _schema1a("TopK", "33f4c14", top_k=TOP_K), "topk", True, None),
    ("1A-relu-after-e7ca004", _schema1a("Relu", "e7ca004"), "relu", False, None),
    (
        "1B-relu",
        {
            "schema": 1,
            "cls": "SparseAutoencoderConfig",
            "cfg": {**_OLD_CFG, "activation": _act("Relu", sparsity={"coeff": 0.0004})},
            "commit": "unknown",
            "lib": "0.1.0",
        },
        "relu",
        False,
        None,
    ),
    ("2-topk", _schema(2, {"d_vit": D_IN, "exp_factor": 4}, _act("TopK", top_k=TOP_K)), "topk", False, None),
    (
        "3-relu",
        _schema(3, {"d_model": D_IN, "exp_factor": 4}, _act("Relu", sparsity={"coeff": 4e-4})),
        "relu",
        False,
        None,
    ),
    (
        "4-batchtopk",
        _schema(4, {"d_model": D_IN, "d_sae": D_SAE}, _act("BatchTopK", top_k=TOP_K, momentum=0.1)),
        "batchtopk",
        False,
        0.4,
    ),
    (
        "4-batchtopk-zero-threshold",
        _schema(4, {"d_model": D_IN, "d_sae": D_SAE}, _act("BatchTopK", top_k=TOP_K)),
        "batchtopk",
        False,
        0.0,
    ),
    ("5-relu", {"schema": 5, "cfg": _S5_CFG, "commit": "3d73f1f", "lib": "1.1.0"}, "relu", False, None),
    (
        "5-topk",
        {
            "schema": 5,
            "cfg": {**_S5_CFG, "activation": _act("TopK", key="top-k", top_k=TOP_K, sparsity=_act("NoSparsity"))},
            "commit": "3d73f1f",
            "lib": "1.1.0",
        },
        "topk",
        False,
        None,
    ),
]


def _reference(state, x, activation, subtract, threshold):
    """saev's encode written out: pre = (x [- b_dec]) W_enc + b_enc, then the activation."""
    xin = x - state["b_dec"] if subtract else x
    pre = torch.matmul(xin, state["W_enc"]) + state["b_enc"]
    if activation == "relu":
        return torch.clamp(pre, min=0.0)
    if activation == "topk":
        kth = pre.sort(dim=1, descending=True).values[:, TOP_K - 1 : TOP_K]
        return torch.where(pre >= kth, pre, torch.zeros_like(pre))
    cut = threshold if threshold > 0 else 0.0
    return torch.where(pre > cut, pre, torch.zeros_like(pre))


def _x(n=12, seed=7):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 3.0


@pytest.mark.parametrize("name,header,activation,subtract,threshold", CASES, ids=[c[0] for c in CASES])
def test_encode_matches_saev_formula(tmp_path, name, header, activation, subtract, threshold):
    state = _weights(seed=len(name), threshold=threshold)
    path = _dump(tmp_path / "sae.pt", header, state)
    sae = load_sae(path)
    assert sae.format == "saev" and not sae.training
    assert (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    assert sae.hook.tokens == "patches"
    assert sae.normalisation.startswith("x - b_dec" if subtract else "x (b_dec not subtracted)")
    x = _x()
    with torch.no_grad():
        got = sae.encode(x)
    want = _reference(state, x, activation, subtract, threshold)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got != 0).any() and (got == 0).any()
    if activation == "topk":
        assert ((got != 0).sum(1) == TOP_K).all()
    # the other convention gives codes this comparison would reject
    other = _reference(state, x, activation, not subtract, threshold)
    assert (other - want).abs().max() > 0.1
    # a directory holding sae.pt loads the same
    torch.testing.assert_close(load_sae(tmp_path).encode(x).detach(), got)
    torch.testing.assert_close(
        sae.decode(got), torch.matmul(got, state["W_dec"]) + state["b_dec"], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name,header,activation,subtract,threshold", CASES, ids=[c[0] for c in CASES])
def test_override_flips_convention(tmp_path, name, header, activation, subtract, threshold):
    from cafe_bench.sae.formats.saev import load_saev

    state = _weights(seed=3, threshold=threshold)
    path = _dump(tmp_path / "sae.pt", header, state)
    x = _x()
    flipped = load_saev(path, subtract_b_dec=not subtract)
    assert "user override" in flipped.normalisation
    with torch.no_grad():
        got = flipped.encode(x)
    torch.testing.assert_close(got, _reference(state, x, activation, not subtract, threshold), rtol=1e-5, atol=1e-5)
    assert (got - _reference(state, x, activation, subtract, threshold)).abs().max() > 0.1
    same = load_saev(path, subtract_b_dec=subtract)
    torch.testing.assert_close(same.encode(x).detach(), load_sae(path).encode(x).detach())


@pytest.mark.parametrize("case", [0, 2, 7, 9], ids=[CASES[i][0] for i in (0, 2, 7, 9)])
def test_encode_feature_is_the_column_with_gradient(tmp_path, case):
    name, header, activation, subtract, threshold = CASES[case]
    path = _dump(tmp_path / "sae.pt", header, _weights(seed=5, threshold=threshold))
    sae = load_sae(path)
    x = _x(n=20).requires_grad_(True)
    codes = sae.encode(x)
    # pick, per row, an active feature where there is one, so gradients are non-trivial
    feats = torch.where((codes != 0).any(1), (codes != 0).float().argmax(1), torch.zeros(20, dtype=torch.long))
    feats[::3] = torch.arange(0, D_SAE, 9)[: len(feats[::3])]
    one = sae.encode_feature(x, feats)
    assert one.shape == (20,)
    torch.testing.assert_close(one, codes.gather(1, feats.view(-1, 1)).squeeze(1), rtol=1e-5, atol=1e-5)
    (g_one,) = torch.autograd.grad(one.sum(), x)
    (g_col,) = torch.autograd.grad(codes.gather(1, feats.view(-1, 1)).sum(), x)
    assert g_one.abs().sum() > 0
    torch.testing.assert_close(g_one, g_col, rtol=1e-5, atol=1e-5)


def test_sniff(tmp_path):
    from cafe_bench.sae.formats.saev import sniff

    _dump(tmp_path / "sae.pt", LEGACY, _weights(0))
    assert sniff(tmp_path / "sae.pt") and sniff(tmp_path)
    torch.save(_weights(0), tmp_path / "plain.pt")
    assert not sniff(tmp_path / "plain.pt")
    (tmp_path / "other.json").write_text(json.dumps(LEGACY) + "\n")
    assert not sniff(tmp_path / "other.json")
    assert "saev" in loading.list_sae_formats()


def _refused(path, *words):
    with pytest.raises(SAEFormatError) as info:
        load_sae(path, format="saev")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    for word in words:
        assert word in msg, msg
    return msg


class _NotATensor:
    def __init__(self):
        self.x = 1


def test_refusals(tmp_path):
    good = _dump(tmp_path / "good.pt", LEGACY, _weights(1))
    data = good.read_bytes()
    header_len = data.index(b"\n") + 1

    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: header_len + (len(data) - header_len) // 2])
    _refused(trunc, "truncated or corrupt")

    only_header = tmp_path / "only_header.pt"
    only_header.write_bytes(data[:header_len])
    _refused(only_header, "truncated")

    cut_header = tmp_path / "cut_header.pt"
    cut_header.write_bytes(data[: header_len // 2])
    _refused(cut_header, "header")

    not_json = tmp_path / "not_json.pt"
    not_json.write_bytes(b"d_vit=16 exp_factor=4\n" + data[header_len:])
    _refused(not_json, "not JSON")

    pickled = tmp_path / "pickled.pt"
    with open(pickled, "wb") as fd:
        fd.write((json.dumps(LEGACY) + "\n").encode())
        torch.save({"W_enc": _NotATensor()}, fd)
    _refused(pickled, "pickled", "refusing")

    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        state = _weights(1)
        del state[key]
        _refused(_dump(tmp_path / f"missing_{key}.pt", LEGACY, state), repr(key))

    state = _weights(1)
    state["W_dec"] = state["W_dec"][:, :8]
    _refused(_dump(tmp_path / "shape.pt", LEGACY, state), "'W_dec'", "shape")

    _refused(_dump(tmp_path / "width.pt", {**LEGACY, "exp_factor": 8}, _weights(1)), "d_sae")
    _refused(_dump(tmp_path / "schema6.pt", {"schema": 6, "cfg": {}}, _weights(1)), "schema")
    _refused(_dump(tmp_path / "jump.pt", _schema1a("JumpRelu", "9f39cf8"), _weights(1)), "JumpRelu")
    no_thr = _schema(3, {"d_model": D_IN, "exp_factor": 4}, _act("BatchTopK", top_k=TOP_K))
    _refused(_dump(tmp_path / "btk.pt", no_thr, _weights(1)), "activation.threshold")
