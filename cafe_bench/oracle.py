"""A greedy oracle: per unit, the patch order that moves z_k most at every step, as an upper reference for AUCs.

Starting from the protocol's start image (the baseline for insertion, the image for deletion), each step tries
every patch not yet taken, one forward pass each (batched over patches and units), and takes the one that
raises z_k most (insertion) or lowers it most (deletion); ties go to the lower patch index. After P steps this
gives an order of all P patches and z_k after every count of patches, so the oracle curve of any step schedule
is read off it. It costs P (P + 1) / 2 forward passes per unit and protocol, so it is computed once, when a
suite is built, and stored with it (it is deterministic); it is a reference, never a registered method.

Greedy is not optimal: a method may beat it on a unit (two patches that only act together, say). Normalised
AUC = (AUC - random) / (oracle - random), a ratio of means over the same units
(:func:`cafe_bench.stats.normalised_ci`), is 0 for the random ranking and 1 for the oracle, in either direction.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_bench.protocols.baselines import imputer
from cafe_bench.protocols.registry import get_protocol
from cafe_bench.target import patches_to_pixels

ORACLE_PROTOCOLS = ("insertion", "deletion")
"""Protocols that have oracle curves (the MoRF ones; LeRF would need a worst-first oracle)."""


@torch.no_grad()
def greedy_oracle(
    target, protocol: str, batch_size: int = 512, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy order (B, P) and raw z_k after 0..P patches taken, (B, P + 1), for every unit of ``target``
    under ``protocol`` (``insertion`` or ``deletion``); ``batch_size`` images per pass (default 512)."""
    proto = get_protocol(protocol)
    if proto.name not in ORACLE_PROTOCOLS:
        raise ValueError(f"no oracle for protocol {proto.name!r}; valid: {', '.join(ORACLE_PROTOCOLS)}")
    b, p, dev = len(target), target.n_patches, target.device
    impute = imputer(target.baseline_name)
    sign = 1.0 if proto.name == "insertion" else -1.0  # maximise sign * z
    taken = torch.zeros(b, p, dtype=torch.bool, device=dev)
    order = np.zeros((b, p), dtype=np.int64)
    values = np.zeros((b, p + 1))
    start = target.forward(target.baseline) if proto.start == "baseline" else target.clean
    values[:, 0] = start.double().cpu().numpy()
    for step in tqdm(range(p), desc=f"oracle {proto.name}", disable=not progress, leave=False):
        cand = (~taken).nonzero()  # (B * (P - step), 2): unit, patch, in ascending patch order per unit
        trial = taken[cand[:, 0]].clone()
        trial[torch.arange(len(cand), device=dev), cand[:, 1]] = True
        z = torch.empty(len(cand), dtype=torch.float64, device=dev)
        for lo in range(0, len(cand), batch_size):
            sl = slice(lo, lo + batch_size)
            pix = patches_to_pixels(trial[sl], target.grid, target.patch_size)
            removed = ~pix if proto.start == "baseline" else pix
            units = cand[sl, 0]
            z[sl] = target.activations(impute(target.images[units], removed, target.baseline[units]), units).double()
        z = z.view(b, p - step)
        best = torch.argmax(sign * z, dim=1)  # first maximum: the lowest patch index among ties
        patches = cand[:, 1].view(b, p - step)[torch.arange(b, device=dev), best]
        taken[torch.arange(b, device=dev), patches] = True
        order[:, step] = patches.cpu().numpy()
        values[:, step + 1] = z[torch.arange(b, device=dev), best].cpu().numpy()
    return order, values


def oracle_scores(order: np.ndarray) -> np.ndarray:
    """(B, P) patch scores that make the curve engine take patches in ``order`` (first patch: highest score)."""
    b, p = order.shape
    scores = np.empty((b, p), dtype=np.float32)
    scores[np.arange(b)[:, None], order] = np.arange(p, 0, -1, dtype=np.float32)[None]
    return scores
