"""Adapter for timm's ``VisionTransformer`` (ViT, DeiT, DINOv2-style towers built by ``timm.create_model``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cafe_bench.models.base import Backbone


class TimmBackbone(Backbone):
    """Wrap a ``timm.models.vision_transformer.VisionTransformer``; forward stops after the deepest requested block.

    Args:
        model: the timm ViT (fixed image size: ``dynamic_img_size=False``).
        mean, std: per-channel input normalisation applied to [0, 1] pixels (default: the model's
            ``pretrained_cfg``).
    """

    def __init__(self, model, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.model = model.eval()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5))
        std = std if std is not None else cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        ph, pw = model.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"only square patches are supported, got {model.patch_embed.patch_size}")
        self.patch_size = int(ph)
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.n_blocks = len(model.blocks)
        self.width = int(model.embed_dim)
        self.n_prefix_tokens = int(model.num_prefix_tokens)

    def embed(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Token embeddings entering block 0, (B, T, d)."""
        return self.embed_tokens(self.patch_tokens(images_b3hw))

    def patch_tokens(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """timm's ``patch_embed`` of the normalised pixels (a stride = kernel = patch conv and a per-token norm),
        (B, P, d)."""
        return self.model.patch_embed((images_b3hw - self.mean) / self.std)

    def embed_tokens(self, tokens_bpd: torch.Tensor) -> torch.Tensor:
        """Prefix tokens, positions, patch dropout and ``norm_pre`` on the patch embedding, (B, T, d)."""
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(tokens_bpd)))

    @property
    def has_patch_tokens(self) -> bool:
        """True for timm's plain ``PatchEmbed`` (one conv with kernel = stride = patch): each token sees one patch.
        A hybrid stem (a CNN before the tokens) mixes neighbouring patches, so it is pixels only."""
        from timm.layers import PatchEmbed

        pe = self.model.patch_embed
        proj = getattr(pe, "proj", None)
        side = (self.patch_size, self.patch_size)
        return (
            type(pe) is PatchEmbed
            and isinstance(proj, torch.nn.Conv2d)
            and tuple(proj.kernel_size) == side
            and tuple(proj.stride) == side
        )

    @property
    def blocks(self):
        return self.model.blocks
