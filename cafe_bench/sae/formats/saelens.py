"""SAEs published in SAELens format: a directory with ``cfg.json`` and ``sae_weights.safetensors``.

Follows SAELens 6.x (read from sae_lens 6.54.12: ``saes/sae.py``, ``standard_sae.py``, ``gated_sae.py``,
``topk_sae.py``, ``jumprelu_sae.py``, ``batchtopk_sae.py``, ``loading/pretrained_sae_loaders.py``,
``training/activation_scaler.py``, ``training/sae_trainer.py``). Inference ``encode`` there is::

    sae_in = norm_in(x) - b_dec * apply_b_dec_to_input
    standard:  relu(sae_in @ W_enc + b_enc)
    jumprelu:  pre = sae_in @ W_enc + b_enc;  relu(pre) * (pre > threshold)
    gated:     (sae_in @ W_enc + b_gate > 0) * relu(sae_in @ (W_enc * exp(r_mag)) + b_mag)
    topk:      pre = sae_in @ W_enc + b_enc  (* ||W_dec[i]|| when rescale_acts_by_decoder_norm);
               the k largest of pre per row, ReLU'd, every other entry 0

with ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in). ``norm_in`` per ``normalize_activations``:

* ``none``: identity.
* ``constant_norm_rescale``: ``x * sqrt(d_in) / ||x||`` per input (decode divides by the same coefficient).
* ``layer_norm``: ``(x - mean(x)) / (std(x) + 1e-5)`` per input, ``std`` with Bessel's correction (torch's
  default); decode undoes it with the same mean and std.
* ``expected_average_only_in``: ``x * s`` with one dataset-wide scalar ``s = sqrt(d_in) / E||x||``. SAELens's
  trainer folds ``s`` into the weights before the final save (``W_enc *= s; W_dec /= s; b_dec /= s``) and sets
  the cfg to ``none``, so a final SAE never carries it. A mid-training checkpoint keeps it and stores ``s`` only
  in ``activation_scaler.json`` beside the cfg; we apply that ``s`` (and divide decode by it, as the fold does).
  Without that file the factor is not in the files and we refuse. (SAELens's own ``load_from_disk`` silently
  ignores the factor; ``from_pretrained`` folds one from its release table.)
* ``covariance_whitening`` is refused: SAELens folds it at the end of training; an unfolded checkpoint needs
  ``activation_whitening.safetensors``, which we do not read.

BatchTopK and Matryoshka-BatchTopK SAEs are exported by SAELens as ``jumprelu`` (one global threshold
repeated d_sae times); their training checkpoints (architecture ``batchtopk``/``matryoshka_batchtopk``) are
refused. Pre-6.0 configs (no ``sae_lens_version``) are defaulted as SAELens's ``handle_pre_6_0_config`` does.

Hook: ``metadata.hook_name`` (6.x) or top-level ``hook_name``/``hook_point`` (older); ``blocks.L.hook_resid_post``
is block L's output; ``blocks.L.hook_resid_pre`` (L >= 1) is the same tensor as ``blocks.{L-1}.hook_resid_post``
in TransformerLens/ViT-Prisma models, so its layer is recorded as L-1 (the name is kept as written). Any other
hook (``hook_mlp_out``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_z``, ``blocks.0.hook_resid_pre`` = the
embeddings, a head index) is refused. No hook fields at all (a bare ``save_model``) gives layer and name None.

Weights are computed in float32 whatever the cfg's ``dtype`` (SAELens casts to that dtype).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from cafe_bench.sae.base import SAE, SAEHook
from cafe_bench.sae.loading import SAEFormat, SAEFormatError, register_sae_format, safetensors_load

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SCALER_FILENAME = "activation_scaler.json"
LAYER_NORM_EPS = 1e-5
"""SAELens's ``run_time_activation_ln_in`` default eps (added to the std, not the variance)."""

ARCHITECTURES = ("standard", "gated", "topk", "jumprelu")
NORMALISATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_TRAINING_ONLY = ("batchtopk", "matryoshka_batchtopk")
_TENSORS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}
_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")


class SAELensSAE(SAE):
    """An SAE read from SAELens files; ``encode`` is SAELens's inference ``encode`` for its architecture."""

    format = "saelens"

    def __init__(
        self,
        architecture: str,
        tensors: dict[str, torch.Tensor],
        *,
        apply_b_dec_to_input: bool = True,
        normalize_activations: str = "none",
        scaling_factor: float | None = None,
        k: int | None = None,
        rescale_acts_by_decoder_norm: bool = False,
        hook: SAEHook | None = None,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAELens architecture {architecture!r}")
        if normalize_activations not in NORMALISATIONS:
            raise ValueError(f"unknown normalize_activations {normalize_activations!r}")
        if normalize_activations == "expected_average_only_in" and scaling_factor is None:
            raise ValueError("expected_average_only_in needs its scaling_factor")
        if architecture == "topk" and k is None:
            raise ValueError("a topk SAE needs k")
        self.architecture = architecture
        for name in _TENSORS[architecture]:
            self.register_parameter(name, nn.Parameter(tensors[name].detach().to(torch.float32).contiguous()))
        self.d_in, self.d_sae = (int(s) for s in self.W_enc.shape)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations
        self.scaling_factor = None if scaling_factor is None else float(scaling_factor)
        self.k = None if k is None else int(k)
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.hook = hook if hook is not None else SAEHook()
        self.normalisation = self._describe_normalisation()
        self._norm_state: tuple | None = None

    def _describe_normalisation(self) -> str:
        steps = {
            "none": [],
            "constant_norm_rescale": ["x * sqrt(d_in) / ||x|| per input (constant_norm_rescale)"],
            "layer_norm": [f"(x - mean(x)) / (std(x, unbiased) + {LAYER_NORM_EPS:g}) per input (layer_norm)"],
            "expected_average_only_in": [
                f"x * {self.scaling_factor!r} (expected_average_only_in factor from {SCALER_FILENAME})"
            ],
        }[self.normalize_activations]
        if self.apply_b_dec_to_input:
            steps.append("then - b_dec" if steps else "x - b_dec")
        return ", ".join(steps) if steps else "none (x as is; b_dec not subtracted)"

    # -- encoder input -------------------------------------------------------------------------------------

    def _norm_in(self, x: torch.Tensor, remember: bool) -> torch.Tensor:
        mode = self.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            if remember:
                self._norm_state = ("coeff", x.shape, coeff)
            return x * coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            if remember:
                self._norm_state = ("ln", mu.shape, mu, std)
            return x / (std + LAYER_NORM_EPS)
        if mode == "expected_average_only_in":
            return x * self.scaling_factor
        return x

    def _sae_in(self, x_nd: torch.Tensor, remember: bool = False) -> torch.Tensor:
        x = self._norm_in(x_nd.to(self.W_enc.dtype), remember)
        return x - self.b_dec if self.apply_b_dec_to_input else x

    # -- SAE contract ----------------------------------------------------------------------------------------

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        h = self._sae_in(x_nd, remember=True)
        if self.architecture == "gated":
            gate = (h @ self.W_enc + self.b_gate > 0).to(h.dtype)
            return gate * torch.relu(h @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        pre = h @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        values, indices = torch.topk(pre, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def encode_feature(self, x_nd: torch.Tensor, features_n: torch.Tensor) -> torch.Tensor:
        if self.architecture == "topk":
            return super().encode_feature(x_nd, features_n)
        h = self._sae_in(x_nd)
        f = features_n.view(-1).to(device=h.device, dtype=torch.long)
        w_dn = self.W_enc.t()[f]  # (N, d_in): the encoder column of each row's feature
        if self.architecture == "gated":
            gate = ((h * w_dn).sum(-1) + self.b_gate[f] > 0).to(h.dtype)
            return gate * torch.relu((h * (w_dn * self.r_mag[f].exp().unsqueeze(1))).sum(-1) + self.b_mag[f])
        pre = (h * w_dn).sum(-1) + self.b_enc[f]
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold[f]).to(pre.dtype)
        return torch.relu(pre)

    def decode(self, z_nm: torch.Tensor) -> torch.Tensor:
        z = z_nm.to(self.W_dec.dtype)
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            z = z / self.W_dec.norm(dim=-1)
        out = z @ self.W_dec + self.b_dec
        mode = self.normalize_activations
        if mode == "expected_average_only_in":
            return out / self.scaling_factor
        if mode in ("constant_norm_rescale", "layer_norm"):
            # As SAELens: the per-input statistics of the last encode undo the normalisation, once.
            state, self._norm_state = self._norm_state, None
            if state is None or tuple(state[1][:-1]) != tuple(out.shape[:-1]):
                raise ValueError(
                    f"decode of a {mode} SAELens SAE needs the per-input statistics of encode on the same "
                    "batch; call encode (or forward) on the inputs first"
                )
            return out / state[2] if mode == "constant_norm_rescale" else out * state[3] + state[2]
        return out


# -- reading the files ---------------------------------------------------------------------------------------


def _directory(path: Path) -> Path | None:
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file() and path.name in (CFG_FILENAME, WEIGHTS_FILENAME):
        return path.parent
    return None


def sniff(path: Path) -> bool:
    """A directory (or its cfg.json / sae_weights.safetensors) holding both SAELens files."""
    d = _directory(path)
    return d is not None and (d / CFG_FILENAME).is_file() and (d / WEIGHTS_FILENAME).is_file()


def _major_version(version) -> int | None:
    m = re.match(r"\s*v?(\d+)", str(version)) if version else None
    return int(m.group(1)) if m else None


def _normalise_cfg(raw: dict) -> dict:
    """The cfg as SAELens 6 sees it: pre-6.0 files defaulted as ``handle_pre_6_0_config`` does."""
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = raw.get("sae_lens_version") or metadata.get("sae_lens_version")
    major = _major_version(version)
    if major is not None and major >= 6:
        return dict(raw)
    renames = {
        "hook_point": "hook_name",
        "hook_point_head_index": "hook_head_index",
        "activation_fn_str": "activation_fn",
    }
    cfg = {renames.get(k, k): v for k, v in raw.items()}
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg.setdefault("architecture", "standard")
    cfg.setdefault("reshape_activations", "hook_z" if "hook_z" in str(cfg.get("hook_name") or "") else "none")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if cfg.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        cfg["architecture"] = "topk"
        cfg["k"] = kwargs["k"]
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    return cfg


def _hook(cfg: dict, cfg_path: Path) -> SAEHook:
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def field(name):
        value = metadata.get(name)
        return cfg.get(name) if value is None else value

    name = field("hook_name")
    if name is None:
        name = cfg.get("hook_point")
    hook_layer = field("hook_layer")
    head = field("hook_head_index")
    if name is None:
        return SAEHook(layer=None, name=None)
    name = str(name)
    if head is not None:
        raise SAEFormatError(
            f"{cfg_path}: hook {name!r} with hook_head_index {head} reads one attention head, not the residual stream"
        )
    m = _RESID.match(name)
    if m is None:
        raise SAEFormatError(
            f"{cfg_path}: hook {name!r} is not the residual stream after a block (blocks.L.hook_resid_post)"
        )
    block, where = int(m.group(1)), m.group(2)
    if hook_layer is not None and (not isinstance(hook_layer, int) or isinstance(hook_layer, bool)):
        raise SAEFormatError(f"{cfg_path}: hook_layer {hook_layer!r} is not an integer")
    if hook_layer is not None and hook_layer != block:
        raise SAEFormatError(f"{cfg_path}: hook_layer {hook_layer} disagrees with hook_name {name!r}")
    if where == "post":
        return SAEHook(layer=block, name=name)
    if block == 0:
        raise SAEFormatError(f"{cfg_path}: hook {name!r} is the embeddings, not the residual stream after a block")
    return SAEHook(layer=block - 1, name=name)  # resid_pre of block L is resid_post of block L-1


def _int_field(cfg: dict, key: str, cfg_path: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFormatError(f"{cfg_path}: {key} must be a positive integer, found {value!r}")
    return value


def _scaling_factor(directory: Path) -> float:
    scaler = directory / SCALER_FILENAME
    where = directory / CFG_FILENAME
    if not scaler.is_file():
        raise SAEFormatError(
            f"{where}: normalize_activations is expected_average_only_in but its scaling factor is not in the "
            f"files (no {SCALER_FILENAME}; SAELens folds it into the weights only at the end of training, or takes "
            "it from its release table); fold it in (W_enc *= s, W_dec /= s, b_dec /= s, cfg 'none') first"
        )
    try:
        value = json.loads(scaler.read_text()).get("scaling_factor")
    except (OSError, ValueError, AttributeError) as exc:
        raise SAEFormatError(f"{scaler}: not a readable activation scaler ({exc})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SAEFormatError(f"{scaler}: scaling_factor must be a positive number, found {value!r}")
    return float(value)


def load(path: Path) -> SAELensSAE:
    """The SAELens SAE at ``path`` (its directory, cfg.json or sae_weights.safetensors), in eval mode."""
    d = _directory(Path(path))
    if d is None or not sniff(d):
        raise SAEFormatError(f"{path}: not a SAELens directory (needs {CFG_FILENAME} and {WEIGHTS_FILENAME})")
    cfg_path, weights_path = d / CFG_FILENAME, d / WEIGHTS_FILENAME
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{cfg_path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{cfg_path}: expected a JSON object, found {type(raw).__name__}")
    cfg = _normalise_cfg(raw)

    arch = cfg.get("architecture")
    if arch in _TRAINING_ONLY:
        raise SAEFormatError(
            f"{cfg_path}: architecture {arch!r} is a SAELens training checkpoint; load its inference export "
            "(save_inference_model writes it as jumprelu)"
        )
    if arch not in ARCHITECTURES:
        raise SAEFormatError(
            f"{cfg_path}: unsupported SAELens architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    act = cfg.get("activation_fn")
    if arch != "topk" and act not in (None, "relu"):
        raise SAEFormatError(f"{cfg_path}: activation_fn {act!r} is not supported (SAELens 6 has only ReLU for {arch})")
    d_in, d_sae = _int_field(cfg, "d_in", cfg_path), _int_field(cfg, "d_sae", cfg_path)
    norm = cfg.get("normalize_activations", "none")
    if norm not in NORMALISATIONS:
        raise SAEFormatError(
            f"{cfg_path}: unsupported normalize_activations {norm!r}; supported: {', '.join(NORMALISATIONS)}"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape != "none":
        raise SAEFormatError(f"{cfg_path}: reshape_activations {reshape!r} is not supported (only 'none')")
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise SAEFormatError(f"{cfg_path}: apply_b_dec_to_input must be true or false, found {apply_b_dec!r}")
    k, rescale = None, False
    if arch == "topk":
        k = _int_field(cfg, "k", cfg_path)
        if k > d_sae:
            raise SAEFormatError(f"{cfg_path}: k {k} exceeds d_sae {d_sae}")
        rescale = cfg.get("rescale_acts_by_decoder_norm", False)
        if not isinstance(rescale, bool):
            raise SAEFormatError(f"{cfg_path}: rescale_acts_by_decoder_norm must be true or false, found {rescale!r}")
    hook = _hook(cfg, cfg_path)
    scaling = _scaling_factor(d) if norm == "expected_average_only_in" else None

    tensors = safetensors_load(weights_path)
    if "scaling_factor" in tensors:  # SAELens drops an all-ones one and cannot load any other in 6.x
        if not torch.all(tensors["scaling_factor"] == 1):
            raise SAEFormatError(
                f"{weights_path}: holds a finetuning scaling_factor other than 1, which SAELens 6 does not support"
            )
        del tensors["scaling_factor"]
    expected = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
        **{name: (d_sae,) for name in ("b_enc", "b_gate", "r_mag", "b_mag", "threshold")},
    }
    missing = [name for name in _TENSORS[arch] if name not in tensors]
    if missing:
        raise SAEFormatError(f"{weights_path}: missing tensor(s) {', '.join(missing)} of a {arch} SAE")
    extra = sorted(set(tensors) - set(_TENSORS[arch]))
    if extra:
        raise SAEFormatError(f"{weights_path}: unexpected tensor(s) {', '.join(extra)} for a {arch} SAE")
    for name in _TENSORS[arch]:
        if tuple(tensors[name].shape) != expected[name]:
            raise SAEFormatError(
                f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, expected {expected[name]} "
                f"(d_in {d_in}, d_sae {d_sae} from {CFG_FILENAME})"
            )
        if not tensors[name].is_floating_point():
            raise SAEFormatError(f"{weights_path}: {name} has dtype {tensors[name].dtype}, expected floating point")
    sae = SAELensSAE(
        arch,
        tensors,
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=norm,
        scaling_factor=scaling,
        k=k,
        rescale_acts_by_decoder_norm=rescale,
        hook=hook,
    )
    return sae.eval()


register_sae_format(
    SAEFormat(
        "saelens",
        sniff,
        load,
        "SAELens directory: cfg.json + sae_weights.safetensors (standard, gated, topk, jumprelu)",
    )
)


SAVED_VERSION = "6.0.0"
"""The SAELens cfg layout :func:`save_saelens` writes (6.x: hook fields under ``metadata``)."""


def save_saelens(
    directory,
    architecture: str,
    tensors: dict[str, torch.Tensor],
    *,
    k: int | None = None,
    hook_name: str | None = None,
    dtype: torch.dtype = torch.float32,
    metadata: dict | None = None,
) -> Path:
    """Write an SAE as SAELens 6.x lays one out (``cfg.json`` + ``sae_weights.safetensors``, inference form:
    ``apply_b_dec_to_input`` true, no normalisation), tensors stored as ``dtype``; returns the directory.

    Args:
        architecture: one of ``ARCHITECTURES``; ``tensors`` holds that architecture's tensors (``W_enc`` (d_in,
            d_sae), ``W_dec`` (d_sae, d_in), ...).
        k: the top-k of a ``topk`` SAE.
        hook_name: e.g. ``blocks.7.hook_resid_post`` (recorded under ``metadata``); None writes no hook.
        metadata: more ``metadata`` fields (training notes).
    """
    from safetensors.torch import save

    from cafe_bench.files import write_bytes_atomic, write_json_atomic

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown SAELens architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = (int(s) for s in tensors["W_enc"].shape)
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": str(dtype).replace("torch.", ""),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": architecture,
        "metadata": {"sae_lens_version": SAVED_VERSION, "hook_name": hook_name, **(metadata or {})},
    }
    if architecture == "topk":
        cfg.update(k=int(k), rescale_acts_by_decoder_norm=False)
    weights = {name: tensors[name].detach().to(dtype).contiguous() for name in _TENSORS[architecture]}
    write_bytes_atomic(directory / WEIGHTS_FILENAME, save(weights))
    write_json_atomic(directory / CFG_FILENAME, cfg)
    return directory
