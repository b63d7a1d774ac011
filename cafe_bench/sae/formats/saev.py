"""SAEs published by saev (OSU-NLP-Group/saev): one ``sae.pt`` file, a JSON header line then a torch state dict.

saev's ``nn.dump`` writes ``json(header) + "\\n"`` and then ``torch.save(sae.state_dict(), fh)`` into the same
file; ``nn.load`` reads the first line as JSON and ``torch.load``s the rest. Tensors: ``W_enc`` (d_model, d_sae),
``b_enc`` (d_sae,), ``W_dec`` (d_sae, d_model), ``b_dec`` (d_model,), and for BatchTopK ``activation.threshold``.

Header layouts (saev ``src/saev/nn/modeling.py``; older ``saev/nn.py``):

* legacy, no ``schema`` key (saev ≤ Apr 2025, e.g. the published CLIP ViT-B/16 ImageNet SAEs): the flat
  ``config.SparseAutoencoder`` fields ``d_vit``, ``exp_factor``, ``sparsity_coeff``, ``n_reinit_samples``, ...;
  ReLU activation; d_sae = d_vit * exp_factor.
* schema 1 (Apr 28 – Jul 31 2025), two sub-formats: 1A ``{"schema": 1, "cls": "Relu"|"TopK"|"BatchTopK", "cfg":
  {d_vit, exp_factor, top_k, ...}, "commit", "lib"}``; 1B ``cls = "SparseAutoencoderConfig"`` with
  ``cfg.activation = {"cls", "params"}``.
* schemas 2-5: ``{"schema", "cfg": {..., "activation": {"cls", "params"}}, "commit", "lib"}``; 2 names the width
  ``d_vit`` or ``d_model``, 3 always ``d_model``, 4 replaces ``exp_factor`` by ``d_sae``, 5 nests the sparsity
  and aux objectives as ``{"cls", "params"}`` too (they do not affect encoding).

The ``b_dec`` convention: saev encoded ``relu((x - b_dec) @ W_enc + b_enc)`` until commit e7ca004 (2025-07-31,
"don't remove decoder bias since it's zero by default"); since then ``act(x @ W_enc + b_enc)``. That commit and
the few after it on the same afternoon still wrote schema-1A headers; schema 2 (8d38c23) came the same evening.
So: legacy → subtract; schema 1A → subtract unless the header's ``commit`` is one of those listed in
``_SCHEMA1_NO_SUBTRACT_COMMITS``; schema 1B and 2-5 → do not subtract. (saev's own current ``load`` never
subtracts, even for legacy files, so it does not reproduce the codes those SAEs were trained and published with.)
``load_saev(path, subtract_b_dec=...)`` overrides the detection.

saev applies no input scaling inside the SAE; its data loaders could centre and rescale activations (the old
``scale_mean``/``scale_norm`` options) but that is not stored in ``sae.pt`` and is not applied here.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch

from cafe_bench.sae.base import SAE, SAEHook
from cafe_bench.sae.loading import SAEFormat, SAEFormatError, register_sae_format

_MAX_HEADER_BYTES = 1 << 20
_KNOWN_SCHEMAS = (1, 2, 3, 4, 5)

_SCHEMA1_NO_SUBTRACT_COMMITS = (
    "e7ca004660a3ab414da7002fcecfc157d5b786aa",
    "ab690dc03fe95926b0f9215476db0fca46a06a2b",
    "fad99298d1458e372361f3f16693cbd672f9d71a",
    "795479bf1f82bb1c16f7e3bbb06ff71e35730e24",
    "5056de48451e471a2978972abcf2196b291da32c",
    "9f39cf867fc2bcf75bdbb04dfb6f2ffa1531e932",
    "6845bc22bdfe38d2a3e1b401b067ba8fa1a555be",
    "5fee417720e4c3cacca1ad2d8177c1455877838a",
    "ea2c9f59a17924f1a66b60a03fecbad66fbe9848",
    "8aecac1833f6412b9f6262b28b90248da6d49d26",
    "f5d892c65a1b2cec1603651f820b884c13656a93",
    "65c5a2b55e11c380d1b0ae537524977b240b346d",
)
"""saev commits whose ``dump`` wrote schema-1A headers but whose encoder no longer subtracted ``b_dec``."""


class SaevSAE(SAE):
    """An saev SAE: ``h = x' @ W_enc + b_enc`` with ``x' = x - b_dec`` (older saev) or ``x' = x`` (current), then
    ReLU, TopK (per row, the k largest pre-activations kept, signs included) or BatchTopK at inference (keep
    ``h > threshold``, or ``h > 0`` when the stored threshold is not positive). Decode: ``z @ W_dec + b_dec``."""

    format = "saev"

    def __init__(
        self,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        *,
        activation: str,
        top_k: int | None = None,
        threshold: torch.Tensor | None = None,
        subtract_b_dec: bool,
        normalisation: str,
        hook: SAEHook | None = None,
    ):
        super().__init__()
        if activation not in ("relu", "topk", "batchtopk"):
            raise ValueError(f"unknown saev activation {activation!r}")
        self.d_in, self.d_sae = int(W_enc.shape[0]), int(W_enc.shape[1])
        self.activation = activation
        self.top_k = top_k
        self.subtract_b_dec = bool(subtract_b_dec)
        self.normalisation = normalisation
        self.hook = hook if hook is not None else SAEHook()
        self.W_enc = torch.nn.Parameter(W_enc.float().contiguous(), requires_grad=False)
        self.b_enc = torch.nn.Parameter(b_enc.float().contiguous(), requires_grad=False)
        self.W_dec = torch.nn.Parameter(W_dec.float().contiguous(), requires_grad=False)
        self.b_dec = torch.nn.Parameter(b_dec.float().contiguous(), requires_grad=False)
        self.register_buffer("threshold", (threshold if threshold is not None else torch.zeros(())).float().reshape(()))

    def _input(self, x_nd: torch.Tensor) -> torch.Tensor:
        return x_nd - self.b_dec if self.subtract_b_dec else x_nd

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return torch.nn.functional.relu(h)
        if self.activation == "topk":
            k = min(int(self.top_k), h.shape[-1])
            _, idxs = torch.topk(h, k, dim=-1, sorted=False)
            mask = torch.zeros_like(h).scatter(-1, idxs, 1.0)
            return torch.mul(mask, h)
        # BatchTopK in eval mode: an elementwise JumpReLU with the learned threshold.
        if self.threshold <= 0:
            return torch.where(h > 0, h, torch.zeros_like(h))
        return torch.where(h > self.threshold, h, torch.zeros_like(h))

    def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
        h = self._input(x_nd) @ self.W_enc + self.b_enc
        return self._activate(h)

    def decode(self, z_nm: torch.Tensor) -> torch.Tensor:
        return z_nm @ self.W_dec + self.b_dec

    def encode_feature(self, x_nd: torch.Tensor, features_n: torch.Tensor) -> torch.Tensor:
        if self.activation == "topk":  # depends on the whole row of pre-activations
            return super().encode_feature(x_nd, features_n)
        features_n = features_n.view(-1).to(self.W_enc.device)
        w_nd = self.W_enc[:, features_n].T  # (N, d_in)
        h_n = (self._input(x_nd) * w_nd).sum(-1) + self.b_enc[features_n]
        return self._activate(h_n)


def _sae_file(path: Path) -> Path:
    path = Path(path)
    return path / "sae.pt" if path.is_dir() else path


def _read_header_line(fh, file: Path) -> bytes:
    line = fh.readline(_MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise SAEFormatError(f"{file}: no complete JSON header line (truncated, or not an saev sae.pt)")
    return line


def sniff(path: Path) -> bool:
    """True for a ``.pt`` file, or a directory holding ``sae.pt``, whose first line is a JSON object."""
    path = Path(path)
    file = _sae_file(path)
    if not file.is_file() or (not path.is_dir() and file.suffix != ".pt"):
        return False
    try:
        with open(file, "rb") as fh:
            line = fh.readline(_MAX_HEADER_BYTES)
        return line.endswith(b"\n") and isinstance(json.loads(line), dict)
    except (OSError, ValueError):
        return False


def _read(file: Path) -> tuple[dict, dict]:
    """The header and the state dict of an saev file, read without unpickling code."""
    try:
        with open(file, "rb") as fh:
            line = _read_header_line(fh, file)
            payload = fh.read()
    except OSError as exc:
        raise SAEFormatError(f"{file}: cannot read ({exc})") from None
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise SAEFormatError(f"{file}: first line is not JSON ({exc}); not an saev sae.pt") from None
    if not isinstance(header, dict):
        raise SAEFormatError(f"{file}: header line is JSON {type(header).__name__}, expected an object")
    if not payload:
        raise SAEFormatError(f"{file}: nothing after the header line (truncated; the state dict is missing)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = (str(exc).splitlines() or [""])[0][:120]
        raise SAEFormatError(
            f"{file}: the payload after the header cannot be read as tensors alone: corrupt, or it pickles objects "
            f"other than tensors ({first}); refusing to unpickle code; re-save the state dict alone with saev.nn.dump"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise SAEFormatError(
            f"{file}: state dict after the header is not readable (truncated or corrupt: {first})"
        ) from None
    if not isinstance(state, dict):
        raise SAEFormatError(f"{file}: expected a state dict after the header, found {type(state).__name__}")
    return header, state


def _int(value, what: str, file: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFormatError(f"{file}: header field {what} = {value!r} is not a positive integer")
    return value


def _widths(cfg: dict, file: Path) -> tuple[int | None, int | None]:
    """(d_in, d_sae) as the header states them; None where it does not."""
    d_in = cfg.get("d_model", cfg.get("d_vit"))
    d_in = _int(d_in, "d_model/d_vit", file) if d_in is not None else None
    if cfg.get("d_sae") is not None:
        return d_in, _int(cfg["d_sae"], "d_sae", file)
    if cfg.get("exp_factor") is not None and d_in is not None:
        return d_in, d_in * _int(cfg["exp_factor"], "exp_factor", file)
    return d_in, None


def _activation_of(cls_name, params: dict, file: Path) -> tuple[str, int | None]:
    if cls_name == "Relu":
        return "relu", None
    if cls_name in ("TopK", "BatchTopK"):
        top_k = _int(params.get("top_k", 32), "top_k", file)
        return ("topk" if cls_name == "TopK" else "batchtopk"), top_k
    raise SAEFormatError(
        f"{file}: activation {cls_name!r} is not supported (saev defines Relu, TopK and BatchTopK; JumpRelu was "
        "never implemented)"
    )


def parse_header(header: dict, file: Path) -> dict:
    """What the header says: layout name, widths, activation, top_k, the detected b_dec convention and why."""
    if "schema" not in header:
        d_in, d_sae = _widths(header, file)
        return dict(
            layout="legacy (no schema)",
            d_in=d_in,
            d_sae=d_sae,
            activation="relu",
            top_k=None,
            subtract=True,
            why="legacy saev header: encoder input x - b_dec",
            cfg=header,
        )
    schema = header["schema"]
    if isinstance(schema, bool) or schema not in _KNOWN_SCHEMAS:
        raise SAEFormatError(f"{file}: unknown saev header schema {schema!r} (known: legacy, 1-5)")
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{file}: saev schema-{schema} header has no 'cfg' object")
    d_in, d_sae = _widths(cfg, file)
    cls_name = header.get("cls", "SparseAutoencoderConfig") if schema == 1 else None
    if schema == 1 and cls_name != "SparseAutoencoderConfig":
        activation, top_k = _activation_of(cls_name, cfg, file)
        commit = str(header.get("commit", "unknown")).strip().lower()
        no_sub = len(commit) >= 7 and any(c.startswith(commit) for c in _SCHEMA1_NO_SUBTRACT_COMMITS)
        why = (
            f"schema 1A written at saev commit {commit}, after e7ca004 stopped subtracting b_dec"
            if no_sub
            else f"schema 1A (commit {commit}) predates saev e7ca004: encoder input x - b_dec"
        )
        return dict(
            layout="schema 1A",
            d_in=d_in,
            d_sae=d_sae,
            activation=activation,
            top_k=top_k,
            subtract=not no_sub,
            why=why,
            cfg=cfg,
        )
    act = cfg.get("activation")
    if not (isinstance(act, dict) and "cls" in act):
        raise SAEFormatError(f"{file}: saev schema-{schema} header has no cfg.activation {{'cls', 'params'}}")
    params = act.get("params") or {}
    if not isinstance(params, dict):
        raise SAEFormatError(f"{file}: saev cfg.activation.params is not an object")
    activation, top_k = _activation_of(act["cls"], params, file)
    layout = "schema 1B" if schema == 1 else f"schema {schema}"
    return dict(
        layout=layout,
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        top_k=top_k,
        subtract=False,
        why=f"{layout} (saev after e7ca004): encoder input x as is",
        cfg=cfg,
    )


def _tensor(state: dict, key: str, shape: tuple, file: Path) -> torch.Tensor:
    t = state.get(key)
    if not isinstance(t, torch.Tensor):
        raise SAEFormatError(f"{file}: state dict lacks tensor {key!r} (has {', '.join(sorted(map(str, state)))})")
    if tuple(t.shape) != shape:
        raise SAEFormatError(f"{file}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    if not t.is_floating_point():
        raise SAEFormatError(f"{file}: tensor {key!r} has dtype {t.dtype}, expected floating point")
    return t


def load_saev(path, *, subtract_b_dec: bool | None = None) -> SaevSAE:
    """The saev SAE at ``path`` (its ``sae.pt``, or a directory holding one), in eval mode.

    Args:
        path: the file or directory.
        subtract_b_dec: whether the encoder sees ``x - b_dec`` (older saev, incl. the published CLIP ViT-B/16
            ImageNet SAEs) or ``x`` (saev since commit e7ca004, 2025-07-31). None (default) detects it from the
            header: legacy and schema-1A headers subtract (except schema 1A written at the listed commits right
            after e7ca004), schema 1B and 2-5 do not. Pass True/False to override; ``normalisation`` records it.

    Raises SAEFormatError (one line naming the file) for a truncated or corrupt file, a header that is not JSON,
    an unknown schema or activation, a pickle payload with code, or missing or wrongly shaped tensors.
    """
    file = _sae_file(Path(path))
    if not file.is_file():
        raise SAEFormatError(f"{file}: no such saev sae.pt file")
    header, state = _read(file)
    info = parse_header(header, file)
    W_enc = state.get("W_enc")
    if not isinstance(W_enc, torch.Tensor) or W_enc.ndim != 2:
        raise SAEFormatError(
            f"{file}: state dict lacks a 2-d tensor 'W_enc' (has {', '.join(sorted(map(str, state)))})"
        )
    d_in, d_sae = int(W_enc.shape[0]), int(W_enc.shape[1])
    if info["d_in"] is not None and info["d_in"] != d_in:
        raise SAEFormatError(f"{file}: header says d_model {info['d_in']} but W_enc is {tuple(W_enc.shape)}")
    if info["d_sae"] is not None and info["d_sae"] != d_sae:
        raise SAEFormatError(f"{file}: header says d_sae {info['d_sae']} but W_enc is {tuple(W_enc.shape)}")
    W_enc = _tensor(state, "W_enc", (d_in, d_sae), file)
    b_enc = _tensor(state, "b_enc", (d_sae,), file)
    W_dec = _tensor(state, "W_dec", (d_sae, d_in), file)
    b_dec = _tensor(state, "b_dec", (d_in,), file)
    threshold = None
    if info["activation"] == "batchtopk":
        if "activation.threshold" not in state:
            raise SAEFormatError(
                f"{file}: BatchTopK SAE without 'activation.threshold' (saev before ce1add2, 2025-11-16, encoded "
                "batch-coupled at inference, which a per-token attribution cannot reproduce)"
            )
        threshold = _tensor(state, "activation.threshold", (), file)
    if subtract_b_dec is None:
        subtract, how = info["subtract"], f"detected: {info['why']}"
    else:
        subtract, how = bool(subtract_b_dec), f"user override (header {info['layout']} implies "
        how += ("x - b_dec" if info["subtract"] else "x as is") + ")"
    act_text = {
        "relu": "relu",
        "topk": f"top-{info['top_k']} per row",
        "batchtopk": f"BatchTopK eval threshold {float(threshold) if threshold is not None else 0.0:g}",
    }[info["activation"]]
    normalisation = (
        f"{'x - b_dec' if subtract else 'x (b_dec not subtracted)'} then @ W_enc + b_enc, {act_text}; no scaling "
        f"({how}; saev {info['layout']}; any dataset-side scale_mean/scale_norm is not stored in sae.pt)"
    )
    layer = header.get("layer", info["cfg"].get("layer"))
    layer = layer if isinstance(layer, int) and not isinstance(layer, bool) else None
    hook = SAEHook(layer=layer, name=None, tokens="patches")
    sae = SaevSAE(
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        activation=info["activation"],
        top_k=info["top_k"],
        threshold=threshold,
        subtract_b_dec=subtract,
        normalisation=normalisation,
        hook=hook,
    )
    return sae.eval()


def load(path: Path) -> SaevSAE:
    """The registry's loader: the b_dec convention detected from the header."""
    return load_saev(path)


register_sae_format(
    SAEFormat(
        "saev",
        sniff,
        load,
        "saev (OSU-NLP-Group) sae.pt: JSON header line + torch state dict; legacy and schemas 1-5; "
        "ReLU, TopK, BatchTopK; b_dec convention detected from the header",
    )
)
