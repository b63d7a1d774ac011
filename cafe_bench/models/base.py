"""The backbone adapter: the only surface the rest of cafe_bench sees of a ViT."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the model's input: resize the shorter side to ``resize`` pixels with
    ``interpolation``, then centre-crop ``size`` (H, W). Mean/std normalisation is the adapter's, not this."""

    size: tuple[int, int]
    resize: int
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        """JSON form (recorded with a run)."""
        return {"size": list(self.size), "resize": self.resize, "interpolation": self.interpolation}


class Backbone(nn.Module, abc.ABC):
    """A ViT seen as: pixels in [0, 1] -> residual stream after chosen blocks.

    Subclasses wrap one library's ViT (open_clip, timm, ...). Images are (B, 3, H, W) in [0, 1]; the
    adapter applies the model's own input normalisation, so perturbations and baselines live in pixel space.
    """

    patch_size: int
    """Side of a square patch in pixels."""
    grid: tuple[int, int]
    """(gh, gw): patches per column and per row."""
    n_blocks: int
    """Number of transformer blocks."""
    width: int
    """Residual stream dimension d."""
    n_prefix_tokens: int
    """Tokens before the patch tokens (CLS and friends); patch p sits at position n_prefix_tokens + p."""

    preprocess_cfg: Preprocess | None = None
    """Set by the factory from the library's own eval preprocessing; None: resize and crop to the input size."""

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model's input in pixels."""
        return (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)

    @property
    def preprocess(self) -> Preprocess:
        """The eval preprocessing of image files for this model (resize shorter side, centre crop)."""
        return self.preprocess_cfg or Preprocess(self.image_size, min(self.image_size))

    @property
    def n_patches(self) -> int:
        """gh * gw."""
        return self.grid[0] * self.grid[1]

    @property
    @abc.abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order; each maps (B, T, d) -> (B, T, d)."""

    @abc.abstractmethod
    def embed(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Token embeddings entering block 0, (B, T, d), from pixels in [0, 1] (normalised here)."""

    def patch_tokens(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """The patch embedding, (B, P, d): row p depends on the pixels of patch p only. Adapters that implement it
        and :meth:`embed_tokens` (``embed = embed_tokens(patch_tokens(images))``) let the curve engine perturb
        tokens instead of pixels; the default says they don't."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its patch embedding")

    def embed_tokens(self, tokens_bpd: torch.Tensor) -> torch.Tensor:
        """Token embeddings entering block 0, (B, T, d), from the patch embedding (prefix tokens, positions, norms)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its patch embedding")

    @property
    def has_patch_tokens(self) -> bool:
        """Whether the adapter implements :meth:`patch_tokens` and :meth:`embed_tokens`."""
        cls = type(self)
        return cls.patch_tokens is not Backbone.patch_tokens and cls.embed_tokens is not Backbone.embed_tokens

    def residuals(
        self, images_b3hw: torch.Tensor | None, layers: list[int], tokens_bpd: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """Residual stream after each block in ``layers`` (0-based), each (B, T, d); stops at max(layers).
        With ``tokens_bpd`` (a patch embedding, see :meth:`patch_tokens`) the pass starts there instead of at
        the pixels ``images_b3hw``."""
        wanted = sorted({int(layer) for layer in layers})
        for layer in wanted:
            self.check_layer(layer)
        x = self.embed(images_b3hw) if tokens_bpd is None else self.embed_tokens(tokens_bpd)
        out = {}
        for i, block in enumerate(self.blocks[: wanted[-1] + 1]):
            x = block(x)  # (B, T, d)
            if i in wanted:
                out[i] = x
        return out

    def check_layer(self, layer: int) -> None:
        """Raise ValueError naming the valid range if ``layer`` is not a block index."""
        if not 0 <= int(layer) < self.n_blocks:
            raise ValueError(f"layer {layer} out of range; valid: 0..{self.n_blocks - 1}")
