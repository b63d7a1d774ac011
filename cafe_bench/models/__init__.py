"""ViT adapters. Nothing outside this package knows which library a ViT came from."""

from __future__ import annotations

from pathlib import Path

from cafe_bench.models.base import Backbone
from cafe_bench.models.factory import load_backbone
from cafe_bench.models.open_clip_vit import OpenClipBackbone
from cafe_bench.models.timm_vit import TimmBackbone

__all__ = ["Backbone", "OpenClipBackbone", "TimmBackbone", "build_backbone", "load_backbone", "LIBRARIES"]

LIBRARIES = ("open_clip", "timm")


def build_backbone(spec: dict, weights_path: Path | None = None) -> Backbone:
    """Build a backbone from a suite's ``model`` spec and load its safetensors weights (if given).

    Args:
        spec: ``{"library": "open_clip", "vision_config": {...VisionTransformer kwargs}, "mean": [...],
            "std": [...]}`` or ``{"library": "timm", "model_name": "vit_small_patch16_224", "model_kwargs":
            {...}, "mean": [...], "std": [...]}`` (mean and std optional for timm: its pretrained_cfg).
        weights_path: safetensors file with the tower's state dict; None keeps random weights.
    """
    library = spec.get("library")
    if library not in LIBRARIES:
        raise ValueError(f"unknown model library {library!r}; valid: {', '.join(LIBRARIES)}")
    if library == "open_clip":
        from open_clip.transformer import VisionTransformer

        module = VisionTransformer(**spec["vision_config"])
    else:
        import timm

        module = timm.create_model(spec["model_name"], pretrained=False, **spec.get("model_kwargs", {}))
    if weights_path is not None:
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(weights_path)))
    if library == "open_clip":
        return OpenClipBackbone(module, spec["mean"], spec["std"])
    return TimmBackbone(module, spec.get("mean"), spec.get("std"))
