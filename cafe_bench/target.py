"""Target: one SAE feature's activation z_k at one token, per unit, as a differentiable function of pixels.

This is the surface attributors are written against; keep its public names stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, order=True)
class Unit:
    """One unit of work: feature ``feature`` of the SAE at block ``layer``, on image ``image_id`` of the suite's
    image source (an int for the built-in scenes, a relative path for image files), at patch token ``token``
    (row-major patch index, 0..gh*gw-1)."""

    layer: int
    feature: int
    image_id: int | str
    token: int

    def key(self) -> tuple:
        """(layer, feature, image_id, token)."""
        return (self.layer, self.feature, self.image_id, self.token)


class Target:
    """A batch of B units ready for attribution.

    Attributes:
        units: the B units, in order.
        images: (B, 3, H, W) clean images in [0, 1].
        baseline: (B, 3, H, W) the protocol's baseline image of each unit (default: blur).
        grid: (gh, gw) patch grid.
        patch_size: patch side in pixels.
        clean: (B,) z_k of each clean image at the unit's token (no grad).
        seeds: (B,) per-unit seeds derived from the run seed; stochastic methods draw from these so that a
            unit's scores do not depend on how units are batched.
        baseline_name: the registered baseline ``baseline`` came from (the curve engine asks it how removed
            patches are filled); None: they show ``baseline``.
    """

    def __init__(
        self,
        backbone,
        saes: dict,
        units: list[Unit],
        images: torch.Tensor,
        baseline: torch.Tensor,
        seeds: list[int],
        baseline_name: str | None = None,
    ):
        self.units = list(units)
        self.baseline_name = baseline_name
        self.backbone = backbone
        self.saes = saes
        self.images = images
        self.baseline = baseline
        self.grid = tuple(backbone.grid)
        self.patch_size = int(backbone.patch_size)
        self.seeds = list(seeds)
        dev = images.device
        self._layers = torch.tensor([u.layer for u in self.units], device=dev)
        self._features = torch.tensor([u.feature for u in self.units], device=dev)
        self._tokens = torch.tensor([u.token for u in self.units], device=dev)
        with torch.no_grad():
            self.clean = self.forward(images)  # (B,)

    @property
    def device(self) -> torch.device:
        """Where images and the model live."""
        return self.images.device

    @property
    def pixel_mean(self) -> torch.Tensor:
        """(1, 3, 1, 1) the mean the model subtracts from pixels before its first layer (its input normalisation)."""
        return self.backbone.mean

    @property
    def n_patches(self) -> int:
        """gh * gw."""
        return self.grid[0] * self.grid[1]

    def __len__(self) -> int:
        return len(self.units)

    def forward(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """z_k at each unit's token for one image per unit, (B,); differentiable."""
        return self.activations(images_b3hw, torch.arange(len(self.units), device=images_b3hw.device))

    def activations(self, images_n3hw: torch.Tensor, unit_idx_n: torch.Tensor) -> torch.Tensor:
        """z_k at the token of unit ``unit_idx_n[i]`` for image i, (N,): many images per unit in one pass."""
        return self._codes(images_n3hw, unit_idx_n, all_tokens=False)

    def feature_map(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """z_k of each unit's feature at every patch token, (B, gh, gw)."""
        idx = torch.arange(len(self.units), device=images_b3hw.device)
        return self._codes(images_b3hw, idx, all_tokens=True).view(-1, *self.grid)

    def pool(self, pixel_map: torch.Tensor) -> torch.Tensor:
        """Sum relevance inside each patch: (B, 3, H, W) or (B, H, W) -> (B, gh, gw); patch maps pass through."""
        return pool_to_patches(pixel_map, self.grid, self.patch_size)

    def _codes(self, images, unit_idx, all_tokens: bool) -> torch.Tensor:
        layers_n = self._layers[unit_idx]
        wanted = sorted(set(layers_n.tolist()))
        res = self.backbone.residuals(images, wanted)
        prefix = self.backbone.n_prefix_tokens
        shape = (len(images), self.n_patches) if all_tokens else (len(images),)
        out = images.new_zeros(shape)
        for layer in wanted:
            rows = (layers_n == layer).nonzero().flatten()
            feats = self._features[unit_idx[rows]]
            if all_tokens:
                h = res[layer][rows, prefix:]  # (n, P, d)
                z = (
                    self.saes[layer]
                    .encode_feature(h.reshape(-1, h.shape[-1]), feats.repeat_interleave(h.shape[1]))
                    .view(len(rows), -1)
                )
            else:
                h = res[layer][rows, prefix + self._tokens[unit_idx[rows]]]  # (n, d)
                z = self.saes[layer].encode_feature(h, feats)
            out = out.index_put((rows,), z)
        return out


def patches_to_pixels(values_np: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Spread one value per patch over its pixels: (N, P) -> (N, 1, H, W), patches row-major."""
    gh, gw = grid
    per_patch = values_np.reshape(-1, 1, gh, gw)
    return per_patch.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def pool_to_patches(pixel_map: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """The framework's one pooling rule: sum of relevance inside each patch, -> (B, gh, gw)."""
    gh, gw = grid
    if pixel_map.dim() == 3 and tuple(pixel_map.shape[1:]) == (gh, gw):
        return pixel_map
    if pixel_map.dim() == 4:
        pixel_map = pixel_map.sum(1)
    if pixel_map.dim() != 3 or tuple(pixel_map.shape[1:]) != (gh * patch_size, gw * patch_size):
        raise ValueError(
            f"expected scores of shape (B, {gh}, {gw}) or pixel relevance (B, [3,] "
            f"{gh * patch_size}, {gw * patch_size}), got {tuple(pixel_map.shape)}"
        )
    b = pixel_map.shape[0]
    return pixel_map.reshape(b, gh, patch_size, gw, patch_size).sum(dim=(2, 4))
