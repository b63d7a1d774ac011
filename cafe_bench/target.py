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
        max_memory: bytes a batched pass over these units may take (the run's ``--max-memory``; gradient methods
            size their chunks by it, and decide by it whether units on one image share a pass); None: the device's
            default budget.
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
        self.max_memory = None
        dev = images.device
        self._layers = torch.tensor([u.layer for u in self.units], device=dev)
        self._layer_set = sorted({u.layer for u in self.units})
        self._features = torch.tensor([u.feature for u in self.units], device=dev)
        self._tokens = torch.tensor([u.token for u in self.units], device=dev)
        with torch.no_grad():
            self.clean = self.forward_distinct(images)  # (B,)

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

    def forward_distinct(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with one pass per distinct image: for inputs laid out like the target's own (its clean
        images or its baselines), units that share an image (:meth:`distinct_images`) share the pass. Inputs where
        such units' rows differ take one row per unit."""
        rows, image_row = self.distinct_images()
        if len(rows) == len(self.units) or not all(
            torch.equal(images_b3hw[u], images_b3hw[rows[g]]) for u, g in enumerate(image_row.tolist())
        ):
            return self.forward(images_b3hw)
        return self.shared_activations(images_b3hw[rows], image_row)

    def distinct_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (G,), image_row (B,)): ``images[rows]`` are the distinct images of the batch (equal image id and
        equal pixels) and unit u's image is ``images[rows][image_row[u]]``; units that share an image can share its
        forward pass (:meth:`shared_activations`). Computed once per target (its images do not change)."""
        if getattr(self, "_distinct", None) is not None:
            return self._distinct
        first: dict = {}
        rows, image_row = [], []
        for u, unit in enumerate(self.units):
            for g in first.get(unit.image_id, []):
                if torch.equal(self.images[rows[g]], self.images[u]):
                    image_row.append(g)
                    break
            else:
                first.setdefault(unit.image_id, []).append(len(rows))
                image_row.append(len(rows))
                rows.append(u)
        dev = self.device
        self._distinct = (
            torch.tensor(rows, device=dev, dtype=torch.long),
            torch.tensor(image_row, device=dev, dtype=torch.long),
        )
        return self._distinct

    def shared_activations(self, images_g3hw, image_row_n: torch.Tensor, tokens: bool = False, units=None):
        """z_k of units ``units`` (default all B), (N,), from one forward pass of G images: unit ``units[n]`` reads
        image ``image_row_n[n]``. With ``tokens`` the G inputs are patch embeddings (G, P, d) (see
        :meth:`activations_from_tokens`)."""
        idx = torch.arange(len(self.units), device=images_g3hw.device) if units is None else units
        return self._codes(images_g3hw, idx, False, image_row_n, tokens)

    @property
    def has_patch_tokens(self) -> bool:
        """Whether the backbone exposes its patch embedding (:meth:`patch_tokens`)."""
        return self.backbone.has_patch_tokens

    def patch_tokens(self, images_n3hw: torch.Tensor) -> torch.Tensor:
        """The backbone's patch embedding of pixels, (N, P, d): row p depends on patch p's pixels only."""
        return self.backbone.patch_tokens(images_n3hw)

    def activations_from_tokens(self, tokens_npd: torch.Tensor, unit_idx_n: torch.Tensor) -> torch.Tensor:
        """:meth:`activations` from patch embeddings (N, P, d) instead of pixels: a perturbation that swaps whole
        patches can swap their tokens (embedded once) instead of re-embedding composed pixels."""
        return self._codes(tokens_npd, unit_idx_n, False, None, True)

    def feature_map(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """z_k of each unit's feature at every patch token, (B, gh, gw)."""
        idx = torch.arange(len(self.units), device=images_b3hw.device)
        return self._codes(images_b3hw, idx, all_tokens=True).view(-1, *self.grid)

    def pool(self, pixel_map: torch.Tensor) -> torch.Tensor:
        """Sum relevance inside each patch: (B, 3, H, W) or (B, H, W) -> (B, gh, gw); patch maps pass through."""
        return pool_to_patches(pixel_map, self.grid, self.patch_size)

    def _codes(self, images, unit_idx, all_tokens: bool, image_row=None, tokens: bool = False) -> torch.Tensor:
        """Row n: unit ``unit_idx[n]`` read from input ``image_row[n]`` (default: input n); inputs are pixels, or
        patch embeddings with ``tokens``."""
        layers_n = self._layers[unit_idx]
        one_layer = len(self._layer_set) == 1  # the runner's batches: no device-to-host read per call
        wanted = list(self._layer_set) if one_layer else sorted(set(layers_n.tolist()))
        res = self.backbone.residuals(None, wanted, images) if tokens else self.backbone.residuals(images, wanted)
        if image_row is not None:
            res = {layer: h[image_row] for layer, h in res.items()}
        prefix = self.backbone.n_prefix_tokens
        shape = (len(unit_idx), self.n_patches) if all_tokens else (len(unit_idx),)
        out = torch.zeros(shape, dtype=torch.float32, device=images.device)
        for layer in wanted:
            rows = (
                torch.arange(len(unit_idx), device=out.device) if one_layer else (layers_n == layer).nonzero().flatten()
            )
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
            out = out.index_put((rows,), z.to(out.dtype))  # an SAE under autocast may return bf16 / fp16
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
