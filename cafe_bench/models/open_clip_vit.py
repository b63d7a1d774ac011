"""Adapter for open_clip's ``VisionTransformer`` (CLIP's visual tower, and the embedded tiny ViT)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cafe_bench.models.base import Backbone


class OpenClipBackbone(Backbone):
    """Wrap an ``open_clip.transformer.VisionTransformer``; forward stops after the deepest requested block.

    Args:
        visual: the open_clip vision tower (``model.visual`` of a CLIP model, or a bare VisionTransformer).
        mean, std: per-channel input normalisation applied to [0, 1] pixels (open_clip's preprocess values).
    """

    def __init__(self, visual, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.visual = visual.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        ph, pw = visual.patch_size
        if ph != pw:
            raise ValueError(f"only square patches are supported, got {visual.patch_size}")
        self.patch_size = int(ph)
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.n_blocks = len(visual.transformer.resblocks)
        self.width = int(visual.transformer.width)
        self.n_prefix_tokens = 1

    def embed(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Token embeddings entering block 0, (B, T, d)."""
        return self.embed_tokens(self.patch_tokens(images_b3hw))

    def patch_tokens(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """The patch embedding (conv1 of the normalised pixels; stride = kernel = patch), (B, P, d)."""
        v = self.visual
        x = (images_b3hw - self.mean) / self.std
        x = v.conv1(x.to(v.conv1.weight.dtype))  # (B, d, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, P, d)

    def embed_tokens(self, tokens_bpd: torch.Tensor) -> torch.Tensor:
        """Class token, positions, patch dropout and ln_pre on the patch embedding, (B, T, d)."""
        v = self.visual
        x = tokens_bpd
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # (B, T, d)
        x = v.patch_dropout(x)
        return v.ln_pre(x)

    @property
    def blocks(self):
        return self.visual.transformer.resblocks
