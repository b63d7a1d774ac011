"""ViT adapters. Nothing outside this package knows which library a ViT came from."""

from __future__ import annotations

from pathlib import Path

from cafe_bench.models.base import Backbone
from cafe_bench.models.open_clip_vit import OpenClipBackbone

__all__ = ["Backbone", "OpenClipBackbone", "build_backbone"]


def build_backbone(spec: dict, weights_path: Path | None = None) -> Backbone:
    """Build a backbone from a suite's ``model`` spec and load its safetensors weights (if given).

    Args:
        spec: ``{"library": "open_clip", "vision_config": {...VisionTransformer kwargs}, "mean": [...],
            "std": [...]}``.
        weights_path: safetensors file with the vision tower's state dict; None keeps random weights.
    """
    library = spec.get("library")
    if library != "open_clip":
        raise ValueError(f"unknown model library {library!r}; valid: open_clip")
    from open_clip.transformer import VisionTransformer

    visual = VisionTransformer(**spec["vision_config"])
    if weights_path is not None:
        from safetensors.torch import load_file

        visual.load_state_dict(load_file(str(weights_path)))
    return OpenClipBackbone(visual, spec["mean"], spec["std"])
