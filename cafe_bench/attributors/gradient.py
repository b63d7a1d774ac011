"""Plain gradient methods: one forward and one backward pass per batch of units."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.attributors.registry import register_attributor

GRAD_CHUNK_BYTES = 256 * 2**20
"""Memory for the per-feature gradients of one batched backward pass; more features are done in several."""


def input_gradient(target, shared: bool = False) -> torch.Tensor:
    """d z_k / d pixels for every unit at once, (B, 3, H, W).

    Units on different images are independent rows, so the gradient of the sum is each row's own gradient.
    With ``shared`` (default False), units on the same image share one forward pass of it: their gradients come from
    one backward pass batched over the features (``torch.autograd.grad(..., is_grads_batched=True)``, the k-th unit
    of every image in the k-th batch entry), to the patch tokens where the backbone exposes them. On 2 CPU cores it
    is slower than one forward row per unit (``benchmarks/test_bench_vitb.py``), so the methods use the default.
    """
    rows, image_row = target.distinct_images() if shared else (None, None)
    if rows is None or len(rows) == len(target):
        images = target.images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(target.forward(images).sum(), images)
        return grad
    rank = torch.zeros_like(image_row)  # unit u is the rank[u]-th unit of its image
    seen: dict[int, int] = {}
    for u, g in enumerate(image_row.tolist()):
        rank[u] = seen.get(g, 0)
        seen[g] = int(rank[u]) + 1
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention has no batched backward
        if target.has_patch_tokens:  # backward to the patch tokens, then once through the patch embedding
            inputs = target.patch_tokens(target.images[rows]).detach().requires_grad_(True)  # (G, P, d)
            grad_tokens = _batched_vjp(
                target.shared_activations(inputs, image_row, tokens=True), inputs, image_row, rank
            )
            images = target.images.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(target.patch_tokens(images), images, grad_tokens)
            return grad
        inputs = target.images[rows].detach().clone().requires_grad_(True)  # (G, 3, H, W)
        return _batched_vjp(target.shared_activations(inputs, image_row), inputs, image_row, rank)


def _batched_vjp(z_b, inputs_g, image_row, rank) -> torch.Tensor:
    """d z_b[u] / d inputs_g[image_row[u]] for every unit u, (B, *input): one backward pass batched over ranks
    (no two units of one rank share an input), in chunks of at most ``GRAD_CHUNK_BYTES`` of gradients."""
    n_rounds = int(rank.max()) + 1
    per_round = max(1, GRAD_CHUNK_BYTES // max(1, inputs_g.numel() * inputs_g.element_size()))
    out = inputs_g.new_empty((len(z_b), *inputs_g.shape[1:]))
    units = torch.arange(len(z_b), device=z_b.device)
    for lo in range(0, n_rounds, per_round):
        hi = min(n_rounds, lo + per_round)
        cotangent = torch.zeros(hi - lo, len(z_b), dtype=z_b.dtype, device=z_b.device)
        mine = (rank >= lo) & (rank < hi)
        cotangent[rank[mine] - lo, units[mine]] = 1.0
        (grads,) = torch.autograd.grad(z_b, inputs_g, cotangent, retain_graph=hi < n_rounds, is_grads_batched=True)
        out[mine] = grads[rank[mine] - lo, image_row[mine]]  # (R, G, ...) -> each unit's own
    return out


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
