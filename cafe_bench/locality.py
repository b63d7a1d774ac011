"""Non-locality of a unit, automated: how much of the causal effect on z_k comes from patches away from its token.

The effective receptive field (ERF) used here is exact single-patch occlusion with the protocol's baseline:
``effect[p] = z_k(clean) - z_k(patch p shows the baseline)``, one forward pass per patch. Only positive
effects count as causal mass (a patch whose removal *raises* z_k does not cause the activation). The score is

    nonlocality = sum of positive effect outside the token's neighbourhood / sum of positive effect

where the neighbourhood is the patches within Chebyshev distance ``radius`` (default 1: the 3x3 block around
the token). A unit is non-local when its score exceeds ``threshold`` (default 0.5): most of what causes the
activation lies away from the patch that carries it. A unit with no positive effect has no score (NaN) and
counts as local.

Why this criterion: it needs no object masks (it runs on photographs and on CLIP as well as on scenes), it is
exact (no sampling), it costs P forward passes per unit, and its one free choice, the neighbourhood, is the
smallest that covers an object straddling patch borders. It is validated against exact object-level Shapley
values on the ``relations`` suite (:mod:`cafe_bench.shapley`), where the truth is computable.
"""

from __future__ import annotations

import numpy as np
import torch

from cafe_bench.protocols.baselines import imputer
from cafe_bench.target import patches_to_pixels

NEIGHBOURHOOD_RADIUS = 1
"""Patches within this Chebyshev distance of the token are its neighbourhood (1: a 3x3 block)."""
NONLOCAL_THRESHOLD = 0.5
"""A unit is non-local when more than this share of its positive occlusion effect lies outside the neighbourhood."""


@torch.no_grad()
def occlusion_effects(target, batch_size: int = 512) -> np.ndarray:
    """(B, P) exact single-patch occlusion: z_k(clean) minus z_k with patch p replaced by the target's baseline
    (filled by the baseline's imputer, as the curve engine does); ``batch_size`` images per pass (default 512)."""
    b, p = len(target), target.n_patches
    eye = torch.eye(p, dtype=torch.bool, device=target.device)
    removed = patches_to_pixels(eye, target.grid, target.patch_size)  # (P, 1, H, W)
    impute = imputer(target.baseline_name)
    rows = [(u, q) for u in range(b) for q in range(p)]
    out = np.empty(b * p)
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        units = torch.tensor([u for u, _ in chunk], device=target.device)
        patches = torch.tensor([q for _, q in chunk], device=target.device)
        images = impute(target.images[units], removed[patches], target.baseline[units])
        out[lo : lo + len(chunk)] = target.activations(images, units).double().cpu().numpy()
    clean = target.clean.double().cpu().numpy()
    return clean[:, None] - out.reshape(b, p)


def neighbourhood(token: int, grid: tuple[int, int], radius: int = NEIGHBOURHOOD_RADIUS) -> np.ndarray:
    """(P,) bool: the patches within Chebyshev distance ``radius`` (default 1) of patch ``token`` (row-major)."""
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    tr, tc = divmod(int(token), gw)
    return (np.abs(rows - tr) <= radius) & (np.abs(cols - tc) <= radius)


def nonlocality(effects_bp, tokens, grid: tuple[int, int], radius: int = NEIGHBOURHOOD_RADIUS) -> np.ndarray:
    """(B,) share of positive effect outside each token's neighbourhood; NaN where no effect is positive.

    >>> nonlocality(np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]]), [0], (3, 3))
    array([0.75])
    """
    effects = np.clip(np.asarray(effects_bp, dtype=np.float64), 0.0, None)
    out = np.full(len(effects), np.nan)
    for i, token in enumerate(tokens):
        total = effects[i].sum()
        if total > 0:
            out[i] = effects[i][~neighbourhood(token, grid, radius)].sum() / total
    return out


def is_nonlocal(scores, threshold: float = NONLOCAL_THRESHOLD) -> np.ndarray:
    """(B,) bool: score above ``threshold`` (default 0.5); a NaN score (no positive effect) is local."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.nan_to_num(scores, nan=-1.0) > threshold


def precision_recall(predicted, truth) -> dict:
    """Precision and recall of boolean ``predicted`` against boolean ``truth``, with the counts (NaN when undefined)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": int((~predicted & ~truth).sum()),
    }
