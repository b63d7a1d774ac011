"""Model-free rankings: the activation map (the paper's baseline) and a seeded random control."""

from __future__ import annotations

import torch

from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.attributors.registry import register_attributor


@register_attributor("activation")
class ActivationAttributor(Attributor):
    """Rank patches by z_k at each patch token of the clean image (where the feature fires). One forward."""

    @torch.no_grad()
    def attribute(self, target) -> torch.Tensor:
        return target.feature_map(target.images)


@register_attributor("random")
class RandomAttributor(Attributor):
    """Uniform random scores, drawn from each unit's seed: the control every method must beat. No pass."""

    deterministic = False

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=0, backward=0)

    def attribute(self, target) -> torch.Tensor:
        gh, gw = target.grid
        maps = [torch.rand(gh, gw, generator=torch.Generator().manual_seed(int(s))) for s in target.seeds]
        return torch.stack(maps).to(target.device)
