"""SAEs published by ViT-Prisma (``soniajoseph/ViT-Prisma``, HF hub ``Prisma-Multimodal/...``).

Layout: a folder with ``config.json`` (``VisionModelSAERunnerConfig.save_config``: ``d_in``, ``expansion_factor``,
``hook_point_layer``, ``layer_subtype``, ``activation_fn_str``, ``activation_fn_kwargs``, ``normalize_activations``,
``architecture``, ``cls_token_only``, ``use_patches_only``, ...) and one or more training checkpoints
``n_images_{N}.pt`` written by ``SparseAutoencoder.save_model``: ``torch.save({"cfg": <pickled config object>,
"state_dict": sae.state_dict()})``. (``n_images_{N}_log_feature_sparsity.pt`` files are not checkpoints.)

* A directory (or its ``config.json``) loads the checkpoint with the **largest** ``N`` (the latest one); a path to
  one ``n_images_{N}.pt`` loads that file.
* The configuration is taken from ``config.json`` only. The tensors are read without executing pickled code: first
  ``torch.load(weights_only=True)``; if the file holds a pickled config object, it is re-read through a restricted
  unpickler whose ``find_class`` resolves only torch's tensor-rebuild functions and ``collections.OrderedDict`` and
  turns every other global (the config class, ``torch.device``, ...) into an inert placeholder that is never imported
  or called.
* Encode, as ViT-Prisma's ``StandardSparseAutoencoder.encode`` / ``GatedSparseAutoencoder.encode``:
  ``x' = norm_in(x) - b_dec`` with ``norm_in`` from ``normalize_activations`` (``layer_norm``:
  ``(x - mean) / (std_unbiased + 1e-5)``; ``constant_norm_rescale``: ``x * sqrt(d_in) / ||x||``; anything else:
  identity), then ``act(x' @ W_enc + b_enc)`` with ``act`` = ReLU, tanh(ReLU) or TopK(k) with ReLU on the kept
  values; gated: ``1[x' @ W_enc + b_gate > 0] * relu(x' @ (W_enc * exp(r_mag)) + b_mag)``.
* Only SAEs on the residual stream after a block (``blocks.{L}.hook_resid_post``) are accepted.
"""

from __future__ import annotations

import collections
import json
import math
import pickle
import re
import types
from pathlib import Path

import torch

from cafe_bench.sae.base import SAE, SAEHook
from cafe_bench.sae.loading import SAEFormat, SAEFormatError, register_sae_format

_CKPT_RE = re.compile(r"^n_images_(\d+)\.pt$")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_LN_EPS = 1e-5
_ACTIVATIONS = ("relu", "tanh-relu", "topk")


# --------------------------------------------------------------------------------------------------------------
# Reading tensors without executing pickled code
# --------------------------------------------------------------------------------------------------------------


class _Inert:
    """Stand-in for any pickled global other than torch's tensor rebuilders: accepts whatever pickle feeds it
    (construction, state, items) and keeps nothing; it is never imported, never calls anything."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _allowed_globals() -> dict:
    import torch._utils as tu

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): tu._rebuild_tensor,
    }
    if hasattr(tu, "_rebuild_parameter"):
        allowed[("torch._utils", "_rebuild_parameter")] = tu._rebuild_parameter
    return allowed


class _TensorOnlyUnpickler(pickle.Unpickler):
    """``find_class`` returns torch's tensor-rebuild functions and OrderedDict; every other global becomes
    :class:`_Inert`, so no module is imported and no pickled callable runs. (torch's own wrapper resolves storage
    types before reaching here.)"""

    def find_class(self, module, name):
        return _allowed_globals().get((module, name), _Inert)


def _restricted_load(file, **kwargs):
    return _TensorOnlyUnpickler(file, **kwargs).load()


_RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=_TensorOnlyUnpickler, load=_restricted_load, __name__="cafe_bench_tensor_only_pickle"
)
"""A ``pickle_module`` for ``torch.load``: torch subclasses its ``Unpickler`` and calls its ``load``."""


def _read_checkpoint(path: Path) -> dict:
    """The state dict (name -> tensor) of a ViT-Prisma checkpoint, never unpickling code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # A pickled config object next to the tensors (ViT-Prisma's save_model): re-read with the restricted
        # unpickler, which never resolves the config's class. weights_only=False is required by torch to accept
        # a pickle_module; safety comes from that module's find_class.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
        except Exception as exc:  # noqa: BLE001 - any failure of an untrusted file is one refusal
            raise SAEFormatError(
                f"{path}: cannot read its tensors without unpickling code ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); re-save the state dict alone "
                "(torch.save(sae.state_dict(), path))"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: not a readable torch file (truncated or corrupt: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "autoencoder" in obj and "config" in obj:
        raise SAEFormatError(
            f"{path}: a legacy SAE-Lens-v2 checkpoint ('config'/'autoencoder'), whose hook ViT-Prisma forces to "
            "hook_mlp_out; not a residual-stream SAE"
        )
    if not isinstance(obj, dict):
        raise SAEFormatError(f"{path}: expected a state dict or {{'cfg', 'state_dict'}}, found {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------------------------------------------
# Files and configuration
# --------------------------------------------------------------------------------------------------------------


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    out = []
    if directory.is_dir():
        for p in directory.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def _resolve(path: Path) -> tuple[Path, Path]:
    """(config.json, checkpoint) of ``path``: a directory (largest n_images), its config.json, or one checkpoint."""
    path = Path(path)
    if path.is_file() and _CKPT_RE.match(path.name):
        ckpt, directory = path, path.parent
    else:
        directory = path if path.is_dir() else path.parent
        found = _checkpoints(directory)
        if not found:
            raise SAEFormatError(f"{directory}: no n_images_*.pt checkpoint (ViT-Prisma layout)")
        ckpt = found[-1][1]
    config = directory / "config.json"
    if not config.is_file():
        raise SAEFormatError(f"{directory}: no config.json next to {ckpt.name} (ViT-Prisma layout)")
    return config, ckpt


def sniff(path: Path) -> bool:
    """True for a directory holding ``config.json`` and an ``n_images_{N}.pt``, or for either of those files in
    such a directory (not for any other file beside them)."""
    path = Path(path)
    if path.is_file() and path.name != "config.json" and not _CKPT_RE.match(path.name):
        return False
    directory = path if path.is_dir() else path.parent
    return (directory / "config.json").is_file() and bool(_checkpoints(directory))


def _unwrap(value):
    """ViT-Prisma writes torch.device/dtype as ``{"__type__": ..., "value": ...}``."""
    if isinstance(value, dict) and "__type__" in value:
        return value.get("value")
    return value


_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return {k: _unwrap(v) for k, v in cfg.items()}


def _hook(cfg: dict, path: Path) -> SAEHook:
    """The residual-stream hook of the config, or SAEFormatError naming the hook."""
    layer = cfg.get("hook_point_layer")
    if isinstance(layer, list) and len(layer) == 1:
        layer = layer[0]
    subtype = cfg.get("layer_subtype", "hook_resid_post")  # ViT-Prisma's default
    if "hook_point" in cfg and cfg["hook_point"] is not None:
        name = str(cfg["hook_point"])
    elif isinstance(layer, int) and not isinstance(layer, bool):
        name = f"blocks.{layer}.{subtype}"
    else:
        raise SAEFormatError(f"{path}: names no hook (hook_point_layer {layer!r}); cannot tell where the SAE reads")
    m = _HOOK_RE.match(name)
    if not m:
        raise SAEFormatError(
            f"{path}: SAE hook {name!r} is not the residual stream after a block (blocks.L.hook_resid_post); "
            "only residual-stream SAEs are supported"
        )
    if isinstance(layer, int) and int(m.group(1)) != layer:
        raise SAEFormatError(f"{path}: hook_point {name!r} disagrees with hook_point_layer {layer}")
    if cfg.get("hook_point_head_index") is not None:
        raise SAEFormatError(f"{path}: SAE reads one attention head (hook_point_head_index); not supported")
    if cfg.get("is_transcoder"):
        raise SAEFormatError(f"{path}: a transcoder (is_transcoder), not an SAE")
    cls_only, patches_only = cfg.get("cls_token_only"), cfg.get("use_patches_only")
    if cls_only and patches_only:
        raise SAEFormatError(f"{path}: cls_token_only and use_patches_only are both set")
    if cls_only:
        tokens = "cls"
    elif patches_only:
        tokens = "patches"
    elif cls_only is False and patches_only is False:
        tokens = "all"
    else:
        tokens = None
    return SAEHook(layer=int(m.group(1)), name=name, tokens=tokens)


# --------------------------------------------------------------------------------------------------------------
# The SAE
# --------------------------------------------------------------------------------------------------------------


class ViTPrismaSAE(SAE):
    """A ViT-Prisma standard or gated SAE, encoding exactly as ViT-Prisma's ``encode``."""

    format = "vit_prisma"

    def __init__(
        self,
        tensors: dict,
        *,
        architecture: str,
        activation: str,
        k: int | None,
        normalize: str | None,
        hook: SAEHook,
    ):
        super().__init__()
        self.architecture, self.activation, self.k, self.normalize = architecture, activation, k, normalize
        self.d_in, self.d_sae = tensors["W_enc"].shape
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.hook = hook
        norm = {
            "layer_norm": "x' = (x - mean(x)) / (std_unbiased(x) + 1e-5) - b_dec",
            "constant_norm_rescale": "x' = x * sqrt(d_in) / ||x|| - b_dec",
        }.get(normalize, "x' = x - b_dec")
        self.normalisation = f"{norm} (normalize_activations={normalize!r})"

    # -- input transform ------------------------------------------------------------------------------------
    def _norm_in(self, x: torch.Tensor):
        """(normalised x, inverse) as ViT-Prisma's run_time_activation_norm_fn_in/out."""
        if self.normalize == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            xc = x - mu
            std = xc.std(dim=-1, keepdim=True)
            return xc / (std + _LN_EPS), lambda y: y * std + mu
        if self.normalize == "constant_norm_rescale":
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, lambda y: y / coeff
        return x, lambda y: y

    def _sae_in(self, x_nd: torch.Tensor) -> torch.Tensor:
        x = x_nd.to(self.W_enc.dtype)
        return self._norm_in(x)[0] - self.b_dec

    def _act(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "tanh-relu":
            return torch.tanh(torch.relu(pre))
        top = torch.topk(pre, k=self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    # -- contract ---------------------------------------------------------------------------------------------
    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        s = self._sae_in(x_nd)
        if self.architecture == "gated":
            gate = ((s @ self.W_enc + self.b_gate) > 0).to(s.dtype)
            return gate * torch.relu(s @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        return self._act(s @ self.W_enc + self.b_enc)

    def encode_feature(self, x_nd: torch.Tensor, features_n: torch.Tensor) -> torch.Tensor:
        if self.activation == "topk":  # not elementwise: needs every pre-activation of the row
            return super().encode_feature(x_nd, features_n)
        s = self._sae_in(x_nd)
        f = features_n.view(-1).to(s.device)
        w = self.W_enc[:, f].T  # (N, d_in)
        if self.architecture == "gated":
            gate = (((s * w).sum(-1) + self.b_gate[f]) > 0).to(s.dtype)
            return gate * torch.relu((s * w).sum(-1) * self.r_mag[f].exp() + self.b_mag[f])
        return self._act((s * w).sum(-1) + self.b_enc[f])

    def decode(self, z_nm: torch.Tensor) -> torch.Tensor:
        """``z @ W_dec + b_dec``. With ``layer_norm``/``constant_norm_rescale`` this is in the normalised units
        (ViT-Prisma undoes the input's own mean/std or norm, which codes alone do not carry); :meth:`forward`
        returns input units."""
        return z_nm.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Reconstruction in input units, as ViT-Prisma's forward (``norm_out(decode(encode(x)))``)."""
        _, inverse = self._norm_in(x_nd.to(self.W_enc.dtype))
        return inverse(self.decode(self.encode(x_nd)))

    def describe(self) -> dict:
        out = super().describe()
        out.update(architecture=self.architecture, activation=self.activation, k=self.k)
        return out


_STANDARD = ("W_enc", "b_enc", "W_dec", "b_dec")
_GATED = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")


def load(path: Path) -> ViTPrismaSAE:
    """The ViT-Prisma SAE at ``path`` (directory: its largest ``n_images_{N}.pt``)."""
    config_path, ckpt = _resolve(Path(path))
    cfg = _config(config_path)
    hook = _hook(cfg, config_path)

    architecture = cfg.get("architecture") or "standard"
    if architecture not in ("standard", "gated"):
        raise SAEFormatError(f"{config_path}: architecture {architecture!r} is not supported (standard, gated)")
    activation = cfg.get("activation_fn_str", "relu")
    if activation not in _ACTIVATIONS:
        raise SAEFormatError(f"{config_path}: activation_fn_str {activation!r} unknown; valid: {_ACTIVATIONS}")
    if architecture == "gated" and activation != "relu":
        raise SAEFormatError(
            f"{config_path}: gated SAE with activation {activation!r}: ViT-Prisma versions disagree on its "
            "magnitude path (relu vs activation_fn); only relu is loaded"
        )
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = None
    if activation == "topk":
        k = kwargs.get("k") if isinstance(kwargs, dict) else None
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise SAEFormatError(f"{config_path}: topk activation without a positive integer activation_fn_kwargs.k")
    normalize = cfg.get("normalize_activations", "layer_norm")  # ViT-Prisma's default when absent
    dtype = _DTYPES.get(str(cfg.get("dtype", cfg.get("_dtype", "float32"))).replace("torch.", ""), torch.float32)

    state = _read_checkpoint(ckpt)
    names = _GATED if architecture == "gated" else _STANDARD
    tensors = {}
    for name in names:
        t = state.get(name)
        if not isinstance(t, torch.Tensor):
            raise SAEFormatError(
                f"{ckpt}: missing tensor {name!r} ({architecture} SAE); found {sorted(map(str, state))[:8]}"
            )
        tensors[name] = t.detach().to(dtype).clone()
    d_in = cfg.get("d_in")
    if not (tensors["W_enc"].ndim == 2 and isinstance(d_in, int)):
        raise SAEFormatError(f"{ckpt}: W_enc is not a matrix or config d_in is missing")
    d_sae = tensors["W_enc"].shape[1]
    expected_sae = cfg.get("d_sae")
    if expected_sae is None and isinstance(cfg.get("expansion_factor"), int):
        expected_sae = d_in * cfg["expansion_factor"]
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    shapes.update({n: (d_sae,) for n in names if n.startswith(("b_enc", "b_gate", "r_mag", "b_mag"))})
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise SAEFormatError(
                f"{ckpt}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape} (config d_in {d_in})"
            )
    if expected_sae is not None and (not isinstance(expected_sae, int) or isinstance(expected_sae, bool)):
        raise SAEFormatError(f"{ckpt}: config.json d_sae {expected_sae!r} is not an integer")
    if expected_sae is not None and expected_sae != d_sae:
        raise SAEFormatError(f"{ckpt}: W_enc has {d_sae} features but config.json says d_sae {expected_sae}")
    if k is not None and k > d_sae:
        raise SAEFormatError(f"{config_path}: topk k={k} exceeds d_sae {d_sae}")
    if not all(math.isfinite(float(t.abs().max())) for t in tensors.values() if t.numel()):
        raise SAEFormatError(f"{ckpt}: non-finite values in the SAE tensors")
    return ViTPrismaSAE(
        tensors, architecture=architecture, activation=activation, k=k, normalize=normalize, hook=hook
    ).eval()


register_sae_format(
    SAEFormat(
        "vit_prisma",
        sniff,
        load,
        "ViT-Prisma (config.json + n_images_*.pt; largest n_images; residual-stream hooks only)",
    )
)
