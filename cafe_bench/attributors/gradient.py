"""Plain gradient methods: one forward pass per image and one backward pass per batch of units."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.attributors.registry import register_attributor
from cafe_bench.memory import default_budget, images_per_batch

GRAD_CHUNK_BYTES = 256 * 2**20
"""Memory for the per-feature gradients of one batched backward pass; more features are done in several."""


def input_gradient(target, shared: bool = True) -> torch.Tensor:
    """d z_k / d pixels for every unit at once, (B, 3, H, W).

    Units on different images are independent rows, so the gradient of the sum is each row's own gradient. With
    ``shared`` (default), the units of an image that holds several share one forward pass of it where that pays
    (:func:`worth_sharing`), and their
    gradients come from backward passes batched over them (``torch.autograd.grad(..., is_grads_batched=True)``) in
    chunks sized by the memory budget, to the patch tokens where the backbone exposes them (see
    :func:`path_gradients`); units alone on their image are rows as before. The
    gradients equal the rows' to float rounding (tests: gradient, grad x input and both LRP rule sets);
    ``benchmarks/test_bench_vitb.py`` measures the gain.
    """
    return path_gradients(target, target.images[None], shared)[0]


def path_gradients(target, inputs_sb3hw: torch.Tensor, shared: bool = True, groups=None) -> torch.Tensor:
    """d z_k / d pixels of unit b at each of its S inputs ``inputs[:, b]``, (S, B, 3, H, W): the gradients along
    a path of images per unit (integrated gradients' interpolation points; S = 1: :func:`input_gradient`).

    With ``shared`` (default), units on one image (:meth:`Target.distinct_images`) whose S inputs are equal too share
    one forward pass of those S inputs and backward passes batched over the units, when they are more images (k x S)
    than one pass of the memory budget holds (:func:`worth_sharing`), in chunks of at most
    ``GRAD_CHUNK_BYTES`` of gradients and of as many units as the memory budget holds S images of
    (``target.max_memory``, the run's ``--max-memory``; default :func:`cafe_bench.memory.default_budget` of the
    device; one unit per pass when it holds fewer, as for integrated gradients on CPU); the others are rows, one
    forward and backward pass of S x B images. Both give the same gradients to float rounding. ``groups``: (rows,
    groups) decided by the caller, rows sorted (default: :func:`sharing_groups` of the inputs, then
    :func:`worth_sharing`).
    """
    s, b = inputs_sb3hw.shape[:2]
    if not shared:
        groups = (torch.arange(b, device=target.device), [])
    if groups is None:
        alone, groups = worth_sharing(target, *sharing_groups(target, inputs_sb3hw), s)
    else:  # the caller's decision, e.g. integrated gradients' for all its passes
        alone, groups = groups
    out = torch.empty_like(inputs_sb3hw)
    if len(alone):
        out[:, alone] = _row_gradient(target, inputs_sb3hw[:, alone], alone)
    for row, units in groups:
        out[:, units] = _shared_gradient(target, inputs_sb3hw[:, row], units)
    return out


def sharing_groups(target, inputs_sb3hw: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """(units done as rows, [(representative unit, units sharing its inputs)]): groups of at least two units on one
    image whose inputs are equal; a stand-in target without :meth:`Target.distinct_images` has none."""
    everyone = torch.arange(inputs_sb3hw.shape[1], device=target.device)
    if not hasattr(target, "distinct_images"):
        return everyone, []
    rows, image_row = target.distinct_images()
    groups = []
    for g, rep in enumerate(rows.tolist()):
        units = [
            u
            for u in (image_row == g).nonzero().flatten().tolist()
            if torch.equal(inputs_sb3hw[:, u], inputs_sb3hw[:, rep])
        ]
        if len(units) > 1:
            groups.append((rep, torch.tensor(units, device=target.device)))
    shared = torch.zeros(len(everyone), dtype=torch.bool, device=target.device)
    for _, units in groups:
        shared[units] = True
    return everyone[~shared], groups


def _row_gradient(target, inputs_sn3hw: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Gradients of ``units`` at their inputs (S, n, 3, H, W), one image row each, from one forward and one backward
    pass."""
    s, n = inputs_sn3hw.shape[:2]
    images = inputs_sn3hw.detach().reshape(s * n, *inputs_sn3hw.shape[2:]).clone().requires_grad_(True)
    every = s == 1 and n == len(target)  # one image per unit, all units in order: the Target's own forward
    with torch.enable_grad():
        z = target.forward(images) if every else target.activations(images, units.repeat(s))  # row i * n + j: unit j
        (grad,) = torch.autograd.grad(z.sum(), images)
    return grad.view_as(inputs_sn3hw)


def worth_sharing(target, alone: torch.Tensor, groups: list, s: int) -> tuple[torch.Tensor, list]:
    """(rows, groups) after moving to the rows every group whose k x ``s`` images fit one pass of the target's memory
    budget: they ride in the row pass at little cost. A proxy, not a cost model: on CPU, forced sharing measured
    mostly slower on the small default-suite model and faster on ViT-B-32's groups of 8 and more
    (``scripts/measure_sharing.py``, ``benchmarks/results/sharing.json``); on a GPU's large budget it rarely shares.
    """
    if not groups:
        return alone, groups
    fits = images_per_pass(target)
    small = [units for _, units in groups if len(units) * s <= fits]
    if not small:
        return alone, groups
    return torch.cat([alone, *small]).sort().values, [(r, u) for r, u in groups if len(u) * s > fits]


def images_per_pass(target) -> int:
    """Images one pass may hold under the target's memory budget (``target.max_memory``, default: the device's)."""
    budget = getattr(target, "max_memory", None) or default_budget(target.device)
    layer = max(u.layer for u in target.units)
    return images_per_batch(target.backbone, layer, target.has_patch_tokens, budget)


def _shared_gradient(target, images_s3hw: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Gradients of the k ``units`` that all read the S images, (S, k, 3, H, W): one forward pass of the images, a
    backward pass batched over the units (in chunks: at most ``GRAD_CHUNK_BYTES`` of gradients, and the memory
    budget for the batched pass), then once through the patch embedding."""
    tokens = target.has_patch_tokens
    images = images_s3hw.detach()
    s, k = len(images), len(units)
    token_size = target.n_patches * target.backbone.width if tokens else 0
    per_unit = s * max(token_size, images[0].numel()) * images.element_size()  # one unit's gradients
    per_chunk = max(1, min(GRAD_CHUNK_BYTES // per_unit, images_per_pass(target) // s))
    per_chunk = -(-k // -(-k // per_chunk))  # chunks of equal size: 8 + 8 rather than 15 + 1
    # a batched backward pass needs the plain attention (the fused CPU kernel has none); one unit at a time does not
    kernel = sdpa_kernel(SDPBackend.MATH) if per_chunk > 1 else nullcontext()
    with torch.enable_grad(), kernel:
        inputs = (target.patch_tokens(images) if tokens else images.clone()).detach().requires_grad_(True)
        unit_rows = units.repeat_interleave(s)  # row j * S + i: unit j at image i
        z = target.shared_activations(inputs, torch.arange(s, device=images.device).repeat(k), tokens, unit_rows)
        pick = torch.eye(k, dtype=z.dtype, device=z.device).repeat_interleave(s, dim=1)  # unit j's S outputs
        grads = []
        for lo in range(0, k, per_chunk):
            hi = min(k, lo + per_chunk)
            if per_chunk > 1:
                (g,) = torch.autograd.grad(z, inputs, pick[lo:hi], retain_graph=hi < k, is_grads_batched=True)
            else:
                (g,) = torch.autograd.grad(z, inputs, pick[lo], retain_graph=hi < k)
                g = g[None]
            if tokens:  # (c, S, P, d) -> pixels, through the patch embedding of c x S copies of the images
                copies = images.expand(hi - lo, *images.shape).reshape(-1, *images.shape[1:]).clone()
                copies.requires_grad_(True)
                (g,) = torch.autograd.grad(target.patch_tokens(copies), copies, g.reshape(-1, *g.shape[2:]))
                g = g.view(hi - lo, *images.shape)
            grads.append(g)
    return torch.cat(grads).transpose(0, 1)


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
