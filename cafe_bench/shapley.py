"""Exact object-level Shapley values of z_k, and how well a method's patch map agrees with them.

Players are the objects of a scene plus the background (every pixel in no object). A coalition S is the image
where the pixels of the players in S show the image and all others show the protocol's baseline (filled by the
baseline's imputer, as the curve engine fills removed patches). With n players all 2^n coalitions are evaluated
in batched forward passes, and

    phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)),

exactly; the values sum to v(all) - v(none) (efficiency). A method's patch scores are turned into player scores
by spreading each patch's score over the players in proportion to the pixels they own in it, and its agreement
with the truth is Kendall's tau-b between player scores and Shapley values (scipy.stats.kendalltau).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import kendalltau

from cafe_bench.protocols.baselines import imputer

MAX_PLAYERS = 12
"""2^n forward passes per unit: refuse games larger than this."""


def player_masks(object_masks: np.ndarray) -> np.ndarray:
    """(n + 1, H, W) bool: each object's pixels, then the background (pixels in no object) as the last player."""
    object_masks = np.asarray(object_masks, dtype=bool)
    background = ~object_masks.any(axis=0) if len(object_masks) else np.ones(object_masks.shape[1:], dtype=bool)
    return np.concatenate([object_masks, background[None]])


def shapley_from_values(values: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values (n,) from the values of all 2^n coalitions, ``values[s]`` for the coalition whose
    bit i is set when player i is present."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (2**n,):
        raise ValueError(f"expected {2**n} coalition values for {n} players, got shape {values.shape}")
    sizes = np.array([bin(s).count("1") for s in range(2**n)])
    weight = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)])
    phi = np.zeros(n)
    for i in range(n):
        without = np.array([s for s in range(2**n) if not s >> i & 1])
        phi[i] = np.sum(weight[sizes[without]] * (values[without | 1 << i] - values[without]))
    return phi


@torch.no_grad()
def coalition_values(target, players: list[np.ndarray], batch_size: int = 512) -> list[np.ndarray]:
    """z_k of every coalition of every unit: a list of (2^n_u,) arrays, ``players[u]`` being (n_u, H, W) masks."""
    rows = []
    for u, masks in enumerate(players):
        if len(masks) > MAX_PLAYERS:
            raise ValueError(f"unit {u} has {len(masks)} players; exact Shapley values stop at {MAX_PLAYERS}")
        rows += [(u, s) for s in range(2 ** len(masks))]
    masks_t = [torch.as_tensor(np.asarray(m, dtype=bool), device=target.device) for m in players]
    impute = imputer(target.baseline_name)
    out = np.empty(len(rows))
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        units = torch.tensor([u for u, _ in chunk], device=target.device)
        kept = torch.stack([_present(masks_t[u], s) for u, s in chunk])[:, None]  # (N, 1, H, W)
        images = impute(target.images[units], ~kept, target.baseline[units])
        out[lo : lo + len(chunk)] = target.activations(images, units).double().cpu().numpy()
    values, lo = [], 0
    for masks in players:
        values.append(out[lo : lo + 2 ** len(masks)])
        lo += 2 ** len(masks)
    return values


def _present(masks: torch.Tensor, coalition: int) -> torch.Tensor:
    bits = torch.tensor([coalition >> i & 1 for i in range(len(masks))], dtype=torch.bool, device=masks.device)
    return (masks & bits[:, None, None]).any(0)


def exact_shapley(target, players: list[np.ndarray], batch_size: int = 512) -> list[np.ndarray]:
    """Exact Shapley values of z_k for each unit of ``target`` over its players ((n_u, H, W) masks each)."""
    values = coalition_values(target, players, batch_size)
    return [shapley_from_values(v, len(m)) for v, m in zip(values, players, strict=True)]


def player_scores(scores_hw: np.ndarray, masks: np.ndarray, patch_size: int) -> np.ndarray:
    """(n,) a patch map (gh, gw) spread over players: each patch's score times the share of its pixels a player
    owns, summed."""
    n, h, w = masks.shape
    gh, gw = h // patch_size, w // patch_size
    share = masks.reshape(n, gh, patch_size, gw, patch_size).mean(axis=(2, 4))  # (n, gh, gw)
    return (share * np.asarray(scores_hw, dtype=np.float64)[None]).sum(axis=(1, 2))


def agreement(scores_hw: np.ndarray, masks: np.ndarray, shapley: np.ndarray, patch_size: int) -> float:
    """Kendall's tau-b between a patch map's player scores and the Shapley values (NaN when either is constant)."""
    mine = player_scores(scores_hw, masks, patch_size)
    if np.ptp(mine) == 0 or np.ptp(shapley) == 0:
        return float("nan")
    return float(kendalltau(mine, shapley).statistic)


def distant_share(shapley: np.ndarray, masks: np.ndarray, near_pixels: np.ndarray) -> float:
    """Share of the positive Shapley mass held by players with no pixel in ``near_pixels`` (H, W bool: the
    token's neighbourhood); NaN when no value is positive."""
    positive = np.clip(np.asarray(shapley, dtype=np.float64), 0.0, None)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    distant = ~(masks & near_pixels[None]).any(axis=(1, 2))
    return float(positive[distant].sum() / total)
