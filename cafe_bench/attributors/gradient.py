"""Plain gradient methods: one forward and one backward per batch of units."""

from __future__ import annotations

import torch

from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.attributors.registry import register_attributor


def input_gradient(target) -> torch.Tensor:
    """d z_k / d pixels for every unit at once, (B, 3, H, W): units are independent rows, so the gradient
    of the sum is each row's own gradient."""
    images = target.images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(target.forward(images).sum(), images)
    return grad


@register_attributor("gradient")
class GradientAttributor(Attributor):
    """Saliency: |d z_k / d pixel|, summed over channels and inside each patch."""

    needs_grad = True

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=1, backward=1)

    def attribute(self, target) -> torch.Tensor:
        return input_gradient(target).abs()


@register_attributor("grad_x_input")
class GradXInputAttributor(Attributor):
    """Gradient x input: pixel * d z_k / d pixel (signed), summed over channels and inside each patch."""

    needs_grad = True

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=1, backward=1)

    def attribute(self, target) -> torch.Tensor:
        return input_gradient(target) * target.images
