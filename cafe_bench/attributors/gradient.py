"""Plain gradient methods: one forward pass per image and one backward pass per batch of units."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.attributors.registry import register_attributor

GRAD_CHUNK_BYTES = 256 * 2**20
"""Memory for the per-feature gradients of one batched backward pass; more features are done in several."""


def input_gradient(target, shared: bool = True) -> torch.Tensor:
    """d z_k / d pixels for every unit at once, (B, 3, H, W).

    Units on different images are independent rows, so the gradient of the sum is each row's own gradient. With
    ``shared`` (default), the units of an image that holds several share one forward pass of it, and their
    gradients come from one backward pass batched over them (``torch.autograd.grad(..., is_grads_batched=True)``),
    to the patch tokens where the backbone exposes them; units alone on their image are rows as before. The
    gradients equal the rows' to float rounding (tests: gradient, grad x input and both LRP rule sets);
    ``benchmarks/test_bench_vitb.py`` measures the gain.
    """
    if not shared or not hasattr(target, "distinct_images"):  # a stand-in target without the sharing surface
        return _row_gradient(target, torch.arange(len(target), device=target.device))
    rows, image_row = target.distinct_images()
    counts = torch.bincount(image_row, minlength=len(rows))
    alone = (counts[image_row] == 1).nonzero().flatten()
    out = torch.empty_like(target.images)
    if len(alone):
        out[alone] = _row_gradient(target, alone)
    for g in (counts > 1).nonzero().flatten().tolist():
        units = (image_row == g).nonzero().flatten()
        out[units] = _shared_gradient(target, int(rows[g]), units)
    return out


def _row_gradient(target, units: torch.Tensor) -> torch.Tensor:
    """Gradients of ``units``, one image row each, from one forward and one backward pass."""
    images = target.images[units].detach().clone().requires_grad_(True)
    every = len(units) == len(target)  # all units in order: the Target's own forward
    with torch.enable_grad():
        z = target.forward(images) if every else target.activations(images, units)
        (grad,) = torch.autograd.grad(z.sum(), images)
    return grad


def _shared_gradient(target, row: int, units: torch.Tensor) -> torch.Tensor:
    """Gradients of ``units``, all on image ``row``: one forward pass of it, a backward pass batched over the units
    (in chunks of at most ``GRAD_CHUNK_BYTES`` of gradients), then once through the patch embedding."""
    tokens = target.has_patch_tokens
    image = target.images[row : row + 1].detach()
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention has no batched backward
        inputs = (target.patch_tokens(image) if tokens else image.clone()).detach().requires_grad_(True)
        z = target.shared_activations(inputs, torch.zeros_like(units), tokens=tokens, units=units)  # (k,)
        k = len(units)
        per_chunk = max(1, GRAD_CHUNK_BYTES // (inputs.numel() * inputs.element_size()))
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        grads = []
        for lo in range(0, k, per_chunk):
            hi = min(k, lo + per_chunk)
            (g,) = torch.autograd.grad(z, inputs, eye[lo:hi], retain_graph=hi < k, is_grads_batched=True)
            grads.append(g[:, 0])  # (chunk, *input)
        grad = torch.cat(grads)
        if tokens:
            images = image.expand(k, -1, -1, -1).clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(target.patch_tokens(images), images, grad)
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
