"""The batched curve engine: every protocol is one mechanism with a start image and a patch order.

At step i of S, the first ceil(i * P / S) of the P patches in the protocol's order (``most``: descending
score, ``least``: ascending score; ties by ascending patch index, row-major) are taken from the image (start
``baseline``: insertion) or replaced by the baseline (start ``image``: deletion). The curve value is z_k at
the unit's token of the perturbed image divided by z_k of the clean image; the AUC is the trapezoid over the
fraction of patches, both ends included. Protocols come from :mod:`cafe_bench.protocols.registry`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from cafe_bench.errors import RunConfigError, UnknownNameError
from cafe_bench.protocols.baselines import imputer, replace_patches
from cafe_bench.protocols.registry import Protocol, get_protocol
from cafe_bench.target import patches_to_pixels


@dataclass(frozen=True)
class Curves:
    """Curves of a batch of units under one protocol."""

    counts: np.ndarray
    """(S+1,) number of patches taken at each step."""
    fractions: np.ndarray
    """(S+1,) counts / P."""
    activations: np.ndarray
    """(B, S+1) raw z_k of the perturbed images."""


def check_steps(steps, n_patches: int) -> int:
    """``steps`` as an int in 1..P; raises RunConfigError naming the valid range (more steps than patches would
    repeat fractions, and the perturbed images grow with S)."""
    try:
        value = int(steps)
    except (TypeError, ValueError):
        raise RunConfigError(f"steps must be an integer in 1..{n_patches}, got {steps!r}") from None
    if not 1 <= value <= n_patches or value != steps:
        raise RunConfigError(f"steps must be an integer in 1..{n_patches} (the number of patches), got {steps}")
    return value


def step_counts(n_patches: int, steps: int) -> np.ndarray:
    """Patches taken at steps 0..S: ceil(i * P / S), exact in integers."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.array([-(-i * n_patches // steps) for i in range(steps + 1)], dtype=np.int64)


def rank_patches(scores_bp: torch.Tensor, order: str = "most") -> torch.Tensor:
    """Patch order (B, P): ``most`` (default) descending score, ``least`` ascending; ties by ascending index."""
    return torch.sort(scores_bp, dim=1, descending=order == "most", stable=True).indices


def step_masks(scores_bp: torch.Tensor, counts: np.ndarray, order: str = "most") -> torch.Tensor:
    """(B, S+1, P) bool: True where a patch is taken at that step (patches in ``order``, default ``most``)."""
    b, p = scores_bp.shape
    order = rank_patches(scores_bp, order)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(p, device=scores_bp.device).expand(b, p))
    counts_t = torch.as_tensor(counts, device=scores_bp.device)
    return rank[:, None, :] < counts_t[None, :, None]  # (B, S+1, P)


def compose(
    images_b3hw,
    baseline_b3hw,
    taken_np: torch.Tensor,
    unit_idx_n: torch.Tensor,
    protocol,
    grid: tuple[int, int],
    patch_size: int,
    impute=replace_patches,
) -> torch.Tensor:
    """Perturbed images (N, 3, H, W): row n mixes unit ``unit_idx_n[n]``'s image and baseline by ``taken_np[n]``
    (the patches taken show the image when the protocol starts at the baseline, the baseline when it starts at
    the image); ``impute`` fills the removed patches (default: the baseline image there)."""
    pix = patches_to_pixels(taken_np, grid, patch_size)  # (N, 1, H, W)
    removed = ~pix if get_protocol(protocol).start == "baseline" else pix
    return impute(images_b3hw[unit_idx_n], removed, baseline_b3hw[unit_idx_n])


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precision of the curves' forward passes: fp32 (default), or autocast to bf16 / fp16."""
PRECISION_TOLERANCE = {"bf16": 0.05, "fp16": 0.03}
"""Largest |AUC(precision) - AUC(fp32)| of one unit's curve that a test allows on the default suite: the measured
maxima over the default run's 1440 curves (``benchmarks/results/precision_relations.json``: bf16 0.039, fp16 0.020)
with a margin. The median is far smaller (bf16 3e-4, fp16 4e-5) and no method's rank changed."""


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``; raises UnknownNameError naming them."""
    if precision not in PRECISIONS:
        raise UnknownNameError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def autocast(device, precision: str = "fp32"):
    """The context the curves' forward passes run in: nothing for fp32, else torch.autocast to bf16 / fp16."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


STAND_IN_BATCH = 512
"""Images per forward pass for a stand-in target without a backbone to size a memory budget on."""


def mixes_tokens(backbone, baseline_name: str | None) -> bool:
    """Whether the curve engine mixes patch tokens by default for this backbone and baseline (see
    :func:`use_tokens`)."""
    return backbone.has_patch_tokens and imputer(baseline_name) is replace_patches


def use_tokens(target, tokens="auto") -> bool:
    """Whether perturbed images are made by mixing patch tokens (``tokens``: ``auto``, True or False).

    Swapping whole patches of pixels and then embedding equals embedding the image and the baseline once and
    swapping their patch tokens, when each token sees one patch (the backbone's ``has_patch_tokens``) and the
    removed patches show the baseline image (not a mask-dependent fill such as ``road``). ``auto`` (default) mixes
    tokens where that holds; True raises ValueError where it does not."""
    backbone = getattr(target, "backbone", None)  # stand-in targets without a backbone compose pixels
    possible = backbone is not None and mixes_tokens(backbone, target.baseline_name)
    if tokens == "auto":
        return possible
    if tokens and not possible:
        if backbone is None or not backbone.has_patch_tokens:
            why = f"{type(backbone).__name__} does not expose a patch embedding"
        else:
            why = f"baseline {target.baseline_name!r} fills removed patches depending on the mask"
        raise ValueError(f"cannot perturb patch tokens: {why}; use tokens=False")
    return bool(tokens)


def token_pair(target) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch tokens (B, P, d) of every unit's image and of its baseline, embedded once per target (cached on it:
    a Target's images and model do not change)."""
    pair = getattr(target, "_token_pair", None)
    if pair is None:
        pair = (target.patch_tokens(target.images), target.patch_tokens(target.baseline))
        target._token_pair = pair
    return pair


def mix_tokens(pair, taken_np: torch.Tensor, unit_idx_n: torch.Tensor, protocol) -> torch.Tensor:
    """Perturbed patch tokens (N, P, d): the token pair's counterpart of :func:`compose` (patches taken show the
    image's tokens when the protocol starts at the baseline, the baseline's when it starts at the image)."""
    image_tokens, baseline_tokens = pair
    shown = taken_np if get_protocol(protocol).start == "baseline" else ~taken_np
    return torch.where(shown[..., None], image_tokens[unit_idx_n], baseline_tokens[unit_idx_n])


@torch.no_grad()
def run_curves(
    target,
    scores_bhw: torch.Tensor,
    protocol: str | Protocol,
    steps: int,
    batch_size: int | None = None,
    endpoints: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_memory: int | None = None,
    tokens="auto",
    precision: str = "fp32",
) -> Curves:
    """Curves of every unit of ``target`` under ``protocol``, all perturbed images batched.

    Args:
        target: the Target (its ``baseline`` is the protocol's baseline).
        scores_bhw: (B, gh, gw) patch scores.
        protocol: a registered protocol name (``insertion``, ``deletion``, ``insertion_lerf``, ...) or Protocol.
        steps: S in 1..P; the curve has S+1 points.
        batch_size: images per forward pass (default: as many as ``max_memory`` allows,
            :func:`cafe_bench.memory.images_per_batch`).
        endpoints: (z of the baseline images, z of the clean images), each (B,), shared by every method;
            steps whose mask is empty or full reuse them instead of a forward pass.
        max_memory: bytes one forward pass may take (default: :func:`cafe_bench.memory.default_budget` of the
            target's device); ignored when ``batch_size`` is given.
        tokens: ``auto`` (default), True or False: mix patch tokens instead of composing pixels (see
            :func:`use_tokens`; the curves agree to float rounding).
        precision: ``fp32`` (default), ``bf16`` or ``fp16``: autocast of the perturbed images' forward passes (the
            endpoints and the clean activation stay as given); see ``PRECISION_TOLERANCE``.
    """
    from cafe_bench.memory import default_budget, images_per_batch

    protocol = get_protocol(protocol)
    b = len(target)
    counts = step_counts(target.n_patches, check_steps(steps, target.n_patches))
    masks = step_masks(scores_bhw.reshape(b, -1).to(target.device), counts, protocol.order)  # (B, S+1, P)
    acts = torch.empty(b, steps + 1, device=target.device)
    todo = list(range(steps + 1))
    if endpoints is not None:
        z_base, z_clean = endpoints
        start, full = (z_base, z_clean) if protocol.start == "baseline" else (z_clean, z_base)
        for i, c in enumerate(counts):
            if c == 0:
                acts[:, i] = start
            elif c == target.n_patches:
                acts[:, i] = full
        todo = [i for i, c in enumerate(counts) if 0 < c < target.n_patches]
    if todo:
        mixing = use_tokens(target, tokens)
        if batch_size is None and hasattr(target, "backbone"):
            budget = max_memory if max_memory is not None else default_budget(target.device)
            batch_size = images_per_batch(target.backbone, max(u.layer for u in target.units), mixing, budget)
        batch_size = batch_size or STAND_IN_BATCH
        pair = token_pair(target) if mixing else None
        impute = imputer(target.baseline_name)
        taken = masks[:, todo].reshape(-1, masks.shape[-1])  # (B * n_todo, P)
        unit_idx = torch.arange(b, device=target.device).repeat_interleave(len(todo))
        out = []
        with autocast(target.device, precision):
            for lo in range(0, len(taken), batch_size):
                sl = slice(lo, lo + batch_size)
                if mixing:
                    tokens_n = mix_tokens(pair, taken[sl], unit_idx[sl], protocol)
                    out.append(target.activations_from_tokens(tokens_n, unit_idx[sl]).float())
                    continue
                imgs = compose(
                    target.images,
                    target.baseline,
                    taken[sl],
                    unit_idx[sl],
                    protocol,
                    target.grid,
                    target.patch_size,
                    impute,
                )
                out.append(target.activations(imgs, unit_idx[sl]).float())
        acts[:, todo] = torch.cat(out).view(b, len(todo))
    return Curves(counts=counts, fractions=counts / target.n_patches, activations=acts.cpu().numpy())


@torch.no_grad()
def run_curves_naive(target, scores_bhw: torch.Tensor, protocol: str, steps: int) -> Curves:
    """Reference: one unit and one step at a time, every step a forward pass (for tests and benchmarks)."""
    protocol = get_protocol(protocol)
    counts = step_counts(target.n_patches, steps)
    acts = np.zeros((len(target), steps + 1))
    sign = -1 if protocol.order == "most" else 1
    for u in range(len(target)):
        flat = scores_bhw[u].reshape(-1).tolist()
        order = sorted(range(len(flat)), key=lambda p: (sign * flat[p], p))
        image, base = target.images[u], target.baseline[u]
        impute = imputer(target.baseline_name)
        for i, c in enumerate(counts):
            removed = torch.full((1, *image.shape[1:]), protocol.start == "baseline", device=image.device)
            for p in order[:c]:
                r, col = divmod(p, target.grid[1])
                ys = slice(r * target.patch_size, (r + 1) * target.patch_size)
                xs = slice(col * target.patch_size, (col + 1) * target.patch_size)
                removed[:, ys, xs] = protocol.start != "baseline"
            img = impute(image[None], removed[None], base[None])[0]
            acts[u, i] = float(target.activations(img[None], torch.tensor([u], device=target.device))[0])
    return Curves(counts=counts, fractions=counts / target.n_patches, activations=acts)


def normalised(curves: Curves, clean_b: np.ndarray) -> np.ndarray:
    """Curves divided by each unit's clean activation (no clipping); rows with clean == 0 become NaN."""
    clean_b = np.asarray(clean_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = curves.activations / clean_b[:, None]
    out[clean_b == 0] = math.nan
    return out
