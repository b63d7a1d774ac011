"""Sparse autoencoders over a ViT's residual stream: the SAE contract, the built-in Matryoshka SAE, and loaders
of published SAE formats (``load_sae``)."""

from __future__ import annotations

from pathlib import Path

from cafe_bench.sae.base import SAE, SAEHook
from cafe_bench.sae.loading import SAEFormatError, list_sae_formats, load_sae, register_sae_format
from cafe_bench.sae.matryoshka import MatryoshkaBatchTopKSAE

__all__ = [
    "SAE",
    "SAEHook",
    "MatryoshkaBatchTopKSAE",
    "SAEFormatError",
    "build_sae",
    "load_sae",
    "list_sae_formats",
    "register_sae_format",
    "SAE_KINDS",
]

SAE_KINDS = {"matryoshka_batchtopk": MatryoshkaBatchTopKSAE}
"""Built-in SAE kinds of a suite manifest."""


def build_sae(spec: dict, weights_path: Path | None = None) -> SAE:
    """The built-in SAE of a suite's spec (``{"kind", "d_in", "d_sae", "k", "group_sizes"}``) with its weights."""
    kind = spec.get("kind")
    if kind not in SAE_KINDS:
        raise ValueError(f"unknown SAE kind {kind!r}; valid: {', '.join(SAE_KINDS)}")
    sae = SAE_KINDS[kind](spec["d_in"], spec["d_sae"], spec["k"], spec["group_sizes"])
    if weights_path is not None:
        from safetensors.torch import load_file

        sae.load_state_dict(load_file(str(weights_path)))
    return sae.eval()
