"""SAEs published in the format of saprmarks/dictionary_learning: a directory holding ``ae.pt`` (a state dict)
and ``config.json`` (``{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer", ...}}``).

Each supported ``dict_class`` is reproduced as the library's own ``load_dictionary`` / ``from_pretrained``
builds it and as its ``encode`` computes codes at inference (checked against dictionary_learning @ 60ec6bf):

- ``BatchTopKSAE`` (nn.Linear layout): ``a = relu(encoder(x - b_dec)); z = a * (a > threshold)``
  (``encode(use_threshold=True)``, the default; the scalar threshold is the running estimate from training).
- ``MatryoshkaBatchTopKSAE``: ``a = relu((x - b_dec) @ W_enc + b_enc); z = a * (a > threshold)``; after
  ``from_pretrained`` every group is active, so no column is zeroed.
- ``AutoEncoderTopK``: ``a = relu(encoder(x - b_dec))``, keep each row's ``k`` largest (``use_threshold=False``,
  its default).
- ``AutoEncoder`` (standard ReLU): ``relu(encoder(x - bias))`` after ``from_pretrained(normalize_decoder=True)``
  (its default): unless the decoder columns already have unit norm, they are divided by their norms and the
  encoder rows and bias multiplied by them.
- ``JumpReluAutoEncoder``: ``pre = x @ W_enc + b_enc; z = relu(pre * (pre > threshold))``, per-feature
  threshold, no ``b_dec`` subtraction (``apply_b_dec_to_input`` is False for files of this format).

Activation normalisation: ``trainSAE(normalize_activations=True)`` trains on ``x / norm_factor`` and, before
saving ``ae.pt``, calls ``ae.scale_biases(norm_factor)`` (biases, and a tracked threshold, times norm_factor).
The saved SAE therefore reads raw activations and nothing is applied at inference; a ``norm_factor`` found in
config.json is recorded in ``normalisation`` but not applied again. A training backup ``ae.pt``
(``{"step", "ae", "optimizer", "config", "norm_factor"}``, unscaled weights) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cafe_bench.sae.base import SAE, SAEHook
from cafe_bench.sae.loading import SAEFormat, SAEFormatError, register_sae_format, torch_load_tensors

WEIGHTS = "ae.pt"
CONFIG = "config.json"

# dict_class -> {key: shape pattern}; "m" = dict_size, "d" = activation_dim, () = scalar.
_LINEAR_TOPK = {  # BatchTopKSAE and AutoEncoderTopK store the same tensors
    "encoder.weight": ("m", "d"),
    "encoder.bias": ("m",),
    "decoder.weight": ("d", "m"),
    "b_dec": ("d",),
    "threshold": (),
    "k": (),
}
_KEYS: dict[str, dict[str, tuple]] = {
    "BatchTopKSAE": _LINEAR_TOPK,
    "MatryoshkaBatchTopKSAE": {
        "W_enc": ("d", "m"),
        "b_enc": ("m",),
        "W_dec": ("m", "d"),
        "b_dec": ("d",),
        "threshold": (),
        "k": (),
        "group_sizes": ("g",),
    },
    "AutoEncoderTopK": _LINEAR_TOPK,
    "AutoEncoder": {
        "encoder.weight": ("m", "d"),
        "encoder.bias": ("m",),
        "decoder.weight": ("d", "m"),
        "bias": ("d",),
    },
    "JumpReluAutoEncoder": {
        "W_enc": ("d", "m"),
        "b_enc": ("m",),
        "W_dec": ("m", "d"),
        "b_dec": ("d",),
        "threshold": ("m",),
    },
}
SUPPORTED = tuple(_KEYS)
_ELEMENTWISE = {"BatchTopKSAE", "MatryoshkaBatchTopKSAE", "AutoEncoder", "JumpReluAutoEncoder"}


class DictionaryLearningSAE(SAE):
    """One of dictionary_learning's SAE classes, with its own encode at inference (see the module docstring).

    Weights are kept in the library's layout: ``enc_weight`` is ``encoder.weight`` (m, d) for nn.Linear
    classes and ``W_enc`` (d, m) otherwise; ``dec_weight`` is ``decoder.weight`` (d, m) or ``W_dec`` (m, d).
    """

    format = "dictionary_learning"

    def __init__(self, dict_class: str, tensors: dict[str, torch.Tensor], hook: SAEHook, normalisation: str):
        super().__init__()
        if not isinstance(dict_class, str) or dict_class not in _KEYS:
            raise ValueError(f"unsupported dict_class {dict_class!r}")
        self.dict_class = dict_class
        self.linear_layout = "encoder.weight" in _KEYS[dict_class]
        self.hook = hook
        self.normalisation = normalisation
        t = {name: value.detach().to(torch.float32) for name, value in tensors.items() if name != "group_sizes"}
        if self.linear_layout:
            enc_w, enc_b, dec_w = t["encoder.weight"], t["encoder.bias"], t["decoder.weight"]
            self.d_sae, self.d_in = enc_w.shape
        else:
            enc_w, enc_b, dec_w = t["W_enc"], t["b_enc"], t["W_dec"]
            self.d_in, self.d_sae = enc_w.shape
        b_dec = t["bias"] if dict_class == "AutoEncoder" else t["b_dec"]
        if dict_class == "AutoEncoder":
            # AutoEncoder.from_pretrained(normalize_decoder=True) as load_dictionary calls it.
            norms = torch.norm(dec_w, dim=0)
            if not torch.allclose(norms, torch.ones_like(norms)):
                dec_w = dec_w / norms
                enc_w = enc_w * norms[:, None]
                enc_b = enc_b * norms
        self.enc_weight = nn.Parameter(enc_w.clone(), requires_grad=False)
        self.enc_bias = nn.Parameter(enc_b.clone(), requires_grad=False)
        self.dec_weight = nn.Parameter(dec_w.clone(), requires_grad=False)
        self.b_dec = nn.Parameter(b_dec.clone(), requires_grad=False)
        threshold = t.get("threshold")
        self.register_buffer("threshold", threshold.clone() if threshold is not None else torch.zeros(()))
        self.k = int(tensors["k"].item()) if "k" in tensors else None
        self.group_sizes = [int(g) for g in tensors["group_sizes"].tolist()] if "group_sizes" in tensors else None

    def _input(self, x_nd: torch.Tensor) -> torch.Tensor:
        """What enters the encoder's matmul: ``x - b_dec`` (``x - bias``), or ``x`` for JumpReLU."""
        x_nd = x_nd.to(self.enc_weight.dtype)
        return x_nd if self.dict_class == "JumpReluAutoEncoder" else x_nd - self.b_dec

    def pre_acts(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations (N, m), before any ReLU."""
        xin = self._input(x_nd)
        if self.linear_layout:
            return F.linear(xin, self.enc_weight, self.enc_bias)
        return xin @ self.enc_weight + self.enc_bias

    def _activate(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """The elementwise activation of an elementwise class (threshold broadcast against ``pre``)."""
        if self.dict_class == "JumpReluAutoEncoder":
            return torch.relu(pre * (pre > threshold))
        post = torch.relu(pre)
        if self.dict_class == "AutoEncoder":
            return post
        return post * (post > threshold)

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Codes (N, m) exactly as the class's own ``encode`` computes them at inference."""
        pre = self.pre_acts(x_nd)
        if self.dict_class == "AutoEncoderTopK":
            post = torch.relu(pre)
            top = post.topk(self.k, sorted=False, dim=-1)
            return torch.zeros_like(post).scatter(-1, top.indices, top.values)
        return self._activate(pre, self.threshold)

    def encode_feature(self, x_nd: torch.Tensor, features_n: torch.Tensor) -> torch.Tensor:
        """z[n, features_n[n]], shape (N,); one column per row for the elementwise classes."""
        if self.dict_class not in _ELEMENTWISE:
            return super().encode_feature(x_nd, features_n)
        features_n = features_n.to(self.enc_weight.device).long()
        w_nd = self.enc_weight[features_n] if self.linear_layout else self.enc_weight[:, features_n].T
        pre = (self._input(x_nd) * w_nd).sum(-1) + self.enc_bias[features_n]
        threshold = self.threshold[features_n] if self.threshold.dim() == 1 else self.threshold
        return self._activate(pre, threshold)

    def decode(self, z_nm: torch.Tensor) -> torch.Tensor:
        """Reconstruction (N, d) in input units: the class's own ``decode``."""
        z_nm = z_nm.to(self.dec_weight.dtype)
        if self.linear_layout:
            return F.linear(z_nm, self.dec_weight) + self.b_dec
        return z_nm @ self.dec_weight + self.b_dec


def _files(path: Path) -> tuple[Path, Path]:
    """(ae.pt, config.json) of a directory or of the ae.pt inside it."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    return root / WEIGHTS, root / CONFIG


def _read_config(config_path: Path) -> dict:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(f"{config_path}: not a readable JSON config ({exc})") from None
    trainer = config.get("trainer") if isinstance(config, dict) else None
    if not isinstance(trainer, dict):
        raise SAEFormatError(f"{config_path}: has no 'trainer' dict (not a dictionary_learning config)")
    return trainer


def sniff(path: Path) -> bool:
    """True for a directory (or the ae.pt inside it) holding ae.pt and a config.json with a ``trainer`` dict."""
    try:
        path = Path(path)
        if path.is_file() and path.name != WEIGHTS:
            return False
        weights, config = _files(path)
        if not (weights.is_file() and config.is_file()):
            return False
        _read_config(config)
        return True
    except (OSError, SAEFormatError, ValueError):
        return False


def _check_tensors(weights: Path, dict_class: str, state: dict) -> None:
    """Every key of the class present, a tensor, of a shape consistent with the others; no stray key."""
    expected = _KEYS[dict_class]
    missing = [key for key in expected if key not in state]
    if missing:
        raise SAEFormatError(f"{weights}: {dict_class} state dict lacks {', '.join(missing)}")
    extra = sorted(str(key) for key in state if key not in expected)
    if extra:
        raise SAEFormatError(f"{weights}: unexpected keys for {dict_class}: {', '.join(extra)}")
    for key in expected:
        if not isinstance(state[key], torch.Tensor):
            raise SAEFormatError(f"{weights}: {key} is a {type(state[key]).__name__}, not a tensor")
    primary = "encoder.weight" if "encoder.weight" in expected else "W_enc"
    if state[primary].dim() != 2:
        raise SAEFormatError(f"{weights}: {primary} has shape {tuple(state[primary].shape)}, expected 2-D")
    a, b = state[primary].shape
    dims = {"m": a, "d": b} if primary == "encoder.weight" else {"d": a, "m": b}
    if "group_sizes" in state:
        dims["g"] = state["group_sizes"].numel()
    for key, pattern in expected.items():
        want = tuple(dims[p] for p in pattern)
        if tuple(state[key].shape) != want:
            raise SAEFormatError(f"{weights}: {key} has shape {tuple(state[key].shape)}, expected {want}")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise SAEFormatError(f"{weights}: {key} holds non-finite values")


def load(path: Path) -> DictionaryLearningSAE:
    """The SAE of a dictionary_learning directory (or its ae.pt), in eval mode."""
    weights, config_path = _files(path)
    for file in (weights, config_path):
        if not file.is_file():
            raise SAEFormatError(
                f"{file}: missing; a dictionary_learning SAE is a directory with ae.pt and config.json"
            )
    trainer = _read_config(config_path)
    dict_class = trainer.get("dict_class")
    if not isinstance(dict_class, str) or dict_class not in _KEYS:
        raise SAEFormatError(
            f"{config_path}: dict_class {dict_class!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    state = torch_load_tensors(weights)
    if {"ae", "optimizer", "step"} <= set(state):
        raise SAEFormatError(
            f"{weights}: a training backup checkpoint (step/ae/optimizer), whose weights are not yet scaled by "
            "norm_factor; use the ae.pt that trainSAE saves at the end of training"
        )
    _check_tensors(weights, dict_class, state)
    d_in, d_sae = state["encoder.weight"].shape[::-1] if "encoder.weight" in state else tuple(state["W_enc"].shape)
    for key, value in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and trainer[key] != value:
            raise SAEFormatError(f"{config_path}: {key} {trainer[key]} does not match {weights} ({value})")
    if "k" in state:
        k_value = state["k"].item()
        if k_value != int(k_value):
            raise SAEFormatError(f"{weights}: k={k_value} is not an integer")
        k = int(k_value)
        if k <= 0 or (dict_class == "AutoEncoderTopK" and k > d_sae):
            raise SAEFormatError(f"{weights}: k={k} is not in 1..{d_sae}")
        if trainer.get("k") is not None and trainer["k"] != k:
            raise SAEFormatError(f"{config_path}: k={trainer['k']} != {k}=state_dict['k'] in {weights}")
    if "group_sizes" in state:
        sizes = state["group_sizes"].tolist()
        if any(s <= 0 for s in sizes) or sum(sizes) != d_sae:
            raise SAEFormatError(f"{weights}: group_sizes {sizes} must be positive and sum to dict_size {d_sae}")

    layer = trainer.get("layer")
    name = trainer.get("submodule_name")
    hook = SAEHook(
        layer=layer if isinstance(layer, int) and not isinstance(layer, bool) else None,
        name=name if isinstance(name, str) else None,
    )
    return DictionaryLearningSAE(dict_class, state, hook, _normalisation(dict_class, trainer.get("norm_factor"))).eval()


def _normalisation(dict_class: str, norm_factor) -> str:
    if dict_class == "JumpReluAutoEncoder":
        text = "none: raw x enters x @ W_enc + b_enc (apply_b_dec_to_input=False)"
    elif dict_class == "AutoEncoder":
        text = "x - bias (encoder rows and bias rescaled by decoder column norms at load, as from_pretrained does)"
    else:
        text = "x - b_dec"
    folded = "norm_factor, if used in training, is folded into the saved biases/threshold by scale_biases"
    if isinstance(norm_factor, (int, float)) and not isinstance(norm_factor, bool):
        folded = f"config norm_factor {norm_factor:g} is already folded into the saved weights, not applied again"
    return f"{text}; {folded}"


register_sae_format(
    SAEFormat(
        "dictionary_learning",
        sniff,
        load,
        "saprmarks/dictionary_learning: directory with ae.pt (state dict) and config.json (trainer dict_class "
        f"{', '.join(SUPPORTED)})",
    )
)
