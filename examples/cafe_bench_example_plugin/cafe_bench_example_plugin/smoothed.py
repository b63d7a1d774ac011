"""The activation map smoothed over each patch's neighbourhood: a cheap guess that causes sit next to where
the feature fires."""

import torch
import torch.nn.functional as F

from cafe_bench import Attributor


class SmoothedActivation(Attributor):
    """z_k at each patch token, averaged over a (2r+1) x (2r+1) neighbourhood of patches."""

    def __init__(self, radius: int = 1):
        self.radius = radius  # public attributes are the method's parameters, recorded in run.json

    @torch.no_grad()
    def attribute(self, target) -> torch.Tensor:
        fmap = target.feature_map(target.images)  # (B, gh, gw)
        size = 2 * self.radius + 1
        return F.avg_pool2d(fmap[:, None], size, stride=1, padding=self.radius, count_include_pad=False)[:, 0]
