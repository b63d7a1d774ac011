"""Synthetic models and targets for tests, benchmarks and measurements: no trained weights, known arithmetic.

- :class:`PatchMeanBackbone`: a backbone whose patch residual is the patch's mean colour and a 1, with identity
  blocks, so codes and ties are exact;
- :func:`random_vit_target`: units on a named ViT with random weights and a random SAE, each image's strongest
  feature at its strongest token, for timing at a realistic model size;
- :func:`strongest_features`: many features on one image and token, for work shared between units on one image.
"""

from __future__ import annotations

import torch
from torch import nn

from cafe_bench.models.base import Backbone


class PatchMeanBackbone(Backbone):
    """Residual of patch p = (mean R, mean G, mean B, 1) of the patch, after a zero CLS token; identity blocks."""

    def __init__(self, patch_size: int = 4, grid: tuple[int, int] = (2, 2), n_blocks: int = 1):
        super().__init__()
        self.patch_size, self.grid, self.n_blocks = patch_size, grid, n_blocks
        self.width, self.n_prefix_tokens = 4, 1
        self._blocks = nn.ModuleList([nn.Identity() for _ in range(n_blocks)])

    @property
    def blocks(self):
        return self._blocks

    def embed(self, images_b3hw):
        means = nn.functional.avg_pool2d(images_b3hw, self.patch_size).flatten(2).transpose(1, 2)  # (B, P, 3)
        tokens = torch.cat([means, torch.ones_like(means[..., :1])], dim=-1)  # (B, P, 4)
        return torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)  # (B, 1 + P, 4)


def random_vit_target(model: str = "open_clip:ViT-B-32", layer: int = 6, n_units: int = 8, size: int = 224):
    """A blur-baseline Target of ``n_units`` random ``size`` px images on ``model`` with random weights (default
    ViT-B-32) and a random Matryoshka SAE (4x width, k 32) at block ``layer`` (default 6); each image's unit is its
    strongest feature at its strongest token; seeded, so every call gives the same target."""
    from cafe_bench.models import load_backbone
    from cafe_bench.protocols.baselines import make_baseline
    from cafe_bench.sae import build_sae
    from cafe_bench.target import Target, Unit

    torch.manual_seed(0)
    backbone = load_backbone(model, pretrained="none").eval()
    d = backbone.width
    sae = build_sae({"kind": "matryoshka_batchtopk", "d_in": d, "d_sae": 4 * d, "k": 32, "group_sizes": [d, 4 * d]})
    images = torch.rand(n_units, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        codes = sae.encode(backbone.residuals(images, [layer])[layer][:, backbone.n_prefix_tokens :])
    units = []
    for i in range(n_units):
        token, feature = divmod(int(codes[i].argmax()), codes.shape[-1])
        units.append(Unit(layer, feature, i, token))
    baseline = make_baseline("blur", images)
    return Target(backbone, {layer: sae}, units, images, baseline, list(range(n_units)), baseline_name="blur")


def strongest_features(target, row: int, k: int) -> list:
    """Units of the k SAE features that fire most at unit ``row``'s token of its image (strongest first), at the same
    layer, image and token."""
    from cafe_bench.target import Unit

    unit = target.units[row]
    with torch.no_grad():
        h = target.backbone.residuals(target.images[row : row + 1], [unit.layer])[unit.layer]
        codes = target.saes[unit.layer].encode(h[:, target.backbone.n_prefix_tokens + unit.token])[0]
    return [Unit(unit.layer, f, unit.image_id, unit.token) for f in codes.argsort(descending=True)[:k].tolist()]
