"""Attribution methods from captum: integrated gradients, SmoothGrad and single-patch occlusion.

Every method calls captum with the forward function ``(images, unit_idx) -> z_k`` and passes the unit
index of each input row as an additional forward argument; captum expands it together with the inputs
(interpolation steps, noise samples and ablations), so each row is always evaluated for its own unit. Integrated
gradients replaces captum's gradient step with :func:`cafe_bench.attributors.gradient.path_gradients`, which lets
units on one image share the forward passes of its interpolation points.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from captum.attr import FeatureAblation, IntegratedGradients, NoiseTunnel, Saliency

from cafe_bench.attributors.base import Attributor, Cost, positive_int
from cafe_bench.attributors.gradient import path_gradients, sharing_groups, worth_sharing
from cafe_bench.attributors.registry import register_attributor
from cafe_bench.target import patches_to_pixels

PATH_ROWS_BYTES = 256 * 2**20
"""Shared integrated gradients: at most this much of interpolated images (one per unit and step) per captum pass,
whatever ``batch_size`` allows once shared images count once."""


def _forward_func(target):
    """captum's view of the target: z_k of row n for unit ``unit_idx[n]``."""

    def forward(images: torch.Tensor, unit_idx: torch.Tensor) -> torch.Tensor:
        return target.activations(images, unit_idx)

    return forward


def _unit_index(target) -> torch.Tensor:
    return torch.arange(len(target), device=target.device)


def patch_mask(target) -> torch.Tensor:
    """(1, 1, H, W) long: the row-major patch index of every pixel (captum's ``feature_mask``)."""
    ids = torch.arange(target.n_patches, device=target.device)[None]
    return patches_to_pixels(ids, target.grid, target.patch_size)


@contextmanager
def seeded_torch_rng(seed: int, device: torch.device):
    """Draw from torch's generators seeded with ``seed`` (CPU and ``device``); the global RNG state is restored
    on exit, so nothing outside sees the draws."""
    device = torch.device(device)
    seed = int(seed)
    if device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        fork = torch.random.fork_rng(devices=[index], device_type="cuda")
    else:
        fork = torch.random.fork_rng(device_type=device.type)
    with fork:
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        elif device.type != "cpu":
            torch.manual_seed(seed)
        yield


def integrated_gradients(
    target,
    n_steps: int = 32,
    method: str = "gausslegendre",
    batch_size: int = 64,
    return_convergence_delta: bool = False,
    shared: bool = True,
):
    """captum integrated gradients of every unit from its baseline image, pixel level (B, 3, H, W).

    With ``shared`` (default), captum's gradient step is :func:`path_gradients`: units on one image with one
    baseline share the forward pass of each interpolated image where :func:`worth_sharing` says it pays (decided once
    per call) and get their gradients from backward passes batched over them; ``batch_size`` then counts those
    shared images once, and captum's interpolated images (one per unit
    and step) are kept under ``PATH_ROWS_BYTES`` a pass. The attributions equal the unshared ones to float rounding.
    With ``return_convergence_delta`` also returns captum's delta per unit: sum of the attributions minus
    (z_k(image) - z_k(baseline)).
    """
    ig = IntegratedGradients(_forward_func(target), multiply_by_inputs=True)
    steps_per_pass = max(1, int(batch_size) // len(target))
    if shared:  # equal images and baselines: equal interpolation points
        alone, groups = sharing_groups(target, torch.stack([target.images, target.baseline]))
        per_row = target.images[0].numel() * target.images.element_size()
        cap = max(1, PATH_ROWS_BYTES // per_row // len(target))  # captum still builds every unit's interpolated images
        guess = max(1, min(int(batch_size) // (len(alone) + len(groups)), cap, int(n_steps)))
        alone, groups = worth_sharing(target, alone, groups, guess)  # final: the passes keep these groups
        ig.gradient_func = _path_gradient_func(target, (alone, groups))
        distinct = len(alone) + len(groups)  # images per interpolation step that take a forward pass
        steps_per_pass = max(1, min(int(batch_size) // distinct, cap))
    with torch.enable_grad():
        return ig.attribute(
            target.images,
            baselines=target.baseline,
            additional_forward_args=(_unit_index(target),),
            n_steps=n_steps,
            method=method,
            internal_batch_size=steps_per_pass * len(target),
            return_convergence_delta=return_convergence_delta,
        )


def _path_gradient_func(target, groups):
    """captum's gradient step for integrated gradients, done by :func:`path_gradients` with the units' sharing
    ``groups``: captum stacks the interpolated images step by step (row i * B + b: unit b at step i)."""
    b = len(target)

    def gradient_func(forward_fn, inputs, target_ind=None, additional_forward_args=None):
        (x,) = inputs
        s = len(x) // b
        if not torch.equal(additional_forward_args[0], _unit_index(target).repeat(s)):
            raise RuntimeError("captum's interpolation rows are not laid out step by step; use shared=False")
        return (path_gradients(target, x.view(s, b, *x.shape[1:]), groups=groups).reshape(x.shape),)

    return gradient_func


@register_attributor("integrated_gradients")
class IntegratedGradientsAttributor(Attributor):
    """Integrated gradients (captum) from the protocol's baseline image, summed inside each patch.

    Pixel relevance (x - baseline) * mean of d z_k / d pixel along the straight path from the baseline,
    signed. The SAE's inference threshold makes z_k jump at the threshold; gradients do not see the jump,
    so where z_k(baseline) is 0 the attributions sum to z_k(image) - z_k(baseline) minus about the threshold.

    Args:
        n_steps: points on the path (default 32).
        method: captum's quadrature rule (default ``"gausslegendre"``; ``"riemann_trapezoid"`` etc.).
        batch_size: images per forward/backward pass (default 64; at least one interpolation step of every unit;
            units that share an image and baseline share its images where that pays). Does not change the scores.
    """

    needs_grad = True

    def __init__(self, n_steps: int = 32, method: str = "gausslegendre", batch_size: int = 64):
        from captum.attr._utils.approximation_methods import SUPPORTED_METHODS

        self.n_steps = positive_int(n_steps, "n_steps")
        if method not in SUPPORTED_METHODS:
            raise ValueError(f"method must be one of captum's {', '.join(SUPPORTED_METHODS)}; got {method!r}")
        self.method = str(method)
        self.batch_size = positive_int(batch_size, "batch_size")

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=self.n_steps, backward=self.n_steps)

    def attribute(self, target) -> torch.Tensor:
        return integrated_gradients(target, self.n_steps, self.method, self.batch_size)


@register_attributor("smoothgrad")
class SmoothGradAttributor(Attributor):
    """SmoothGrad (captum NoiseTunnel over Saliency): mean |d z_k / d pixel| under Gaussian pixel noise.

    Pixel relevance, summed over channels and inside each patch. Noise is drawn from each unit's seed, one
    unit at a time, so a unit's scores do not depend on the batch; the global torch RNG state is left as it was.

    Args:
        nt_samples: noisy copies of the image per unit (default 16).
        stdevs: standard deviation of the noise in pixel units, images being in [0, 1] (default 0.1).
    """

    needs_grad = True
    deterministic = False

    def __init__(self, nt_samples: int = 16, stdevs: float = 0.1):
        self.nt_samples = positive_int(nt_samples, "nt_samples")
        self.stdevs = float(stdevs)
        if not (math.isfinite(self.stdevs) and self.stdevs >= 0):
            raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}")

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=self.nt_samples, backward=self.nt_samples)

    def attribute(self, target) -> torch.Tensor:
        tunnel = NoiseTunnel(Saliency(_forward_func(target)))
        maps = []
        for i, seed in enumerate(target.seeds):
            idx = torch.tensor([i], device=target.device)
            with seeded_torch_rng(seed, target.device), torch.enable_grad():
                maps.append(
                    tunnel.attribute(
                        target.images[i : i + 1],
                        nt_type="smoothgrad",
                        nt_samples=self.nt_samples,
                        stdevs=self.stdevs,
                        additional_forward_args=(idx,),
                        abs=True,
                    )
                )
        return torch.cat(maps)


@register_attributor("occlusion")
class OcclusionAttributor(Attributor):
    """Occlusion (captum FeatureAblation): z_k(image) - z_k(image with one patch set to the baseline).

    One patch at a time is replaced by the protocol's baseline image; the score of a patch is the drop in
    z_k it causes (signed).

    Args:
        batch_size: ablated images per forward pass over all units of a batch (default 512); captum ablates
            ``batch_size // B`` patches per unit and pass. Does not change the scores.
    """

    def __init__(self, batch_size: int = 512):
        self.batch_size = positive_int(batch_size, "batch_size")

    def cost(self, n_patches: int) -> Cost:
        """P + 1 forward passes per unit on a grid of P = ``n_patches`` patches: the clean image once, then each
        patch ablated."""
        return Cost(forward=int(n_patches) + 1, backward=0)

    def attribute(self, target) -> torch.Tensor:
        ablation = FeatureAblation(_forward_func(target))
        with torch.no_grad():
            pixel = ablation.attribute(
                target.images,
                baselines=target.baseline,
                additional_forward_args=(_unit_index(target),),
                feature_mask=patch_mask(target),
                perturbations_per_eval=max(1, self.batch_size // len(target)),
            )
        # captum writes each patch's score on every pixel and channel of the patch: read one pixel per patch
        p = target.patch_size
        return pixel[:, 0, ::p, ::p]
