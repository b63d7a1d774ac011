"""Sparse autoencoders over a ViT's residual stream, and their loader."""

from __future__ import annotations

from pathlib import Path

from cafe_bench.sae.matryoshka import MatryoshkaBatchTopKSAE

__all__ = ["MatryoshkaBatchTopKSAE", "load_sae", "SAE_KINDS"]

SAE_KINDS = {"matryoshka_batchtopk": MatryoshkaBatchTopKSAE}


def load_sae(spec: dict, weights_path: Path | None = None):
    """Build an SAE from a suite's spec (``{"kind", "d_in", "d_sae", "k", "group_sizes"}``) and load its weights."""
    kind = spec.get("kind")
    if kind not in SAE_KINDS:
        raise ValueError(f"unknown SAE kind {kind!r}; valid: {', '.join(SAE_KINDS)}")
    sae = SAE_KINDS[kind](spec["d_in"], spec["d_sae"], spec["k"], spec["group_sizes"])
    if weights_path is not None:
        from safetensors.torch import load_file

        sae.load_state_dict(load_file(str(weights_path)))
    return sae.eval()
