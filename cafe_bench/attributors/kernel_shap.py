"""KernelSHAP over patches with the ``shap`` package: players are the P patches of the image."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from cafe_bench.attributors.base import Attributor, Cost, positive_int
from cafe_bench.attributors.registry import register_attributor
from cafe_bench.target import patches_to_pixels

with warnings.catch_warnings():  # shap's plotting colormaps use matplotlib calls that warn on import
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    import shap


@contextmanager
def seeded_numpy_rng(seed: int):
    """Seed numpy's global RNG (which shap draws from) with a 64-bit ``seed``; its state is restored on exit."""
    state = np.random.get_state()
    seed = int(seed)
    try:
        np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
        yield
    finally:
        np.random.set_state(state)


def coalition_model(target, i: int, batch_size: int = 64):
    """shap's model for unit ``i``: (n, P) 0/1 coalitions -> (n,) z_k of the composed images, where a
    present patch shows the image and an absent one the baseline."""
    image = target.images[i : i + 1]
    base = target.baseline[i : i + 1]

    @torch.no_grad()
    def model(coalitions) -> np.ndarray:
        keep = torch.as_tensor(np.asarray(coalitions) > 0.5, device=target.device)
        keep = patches_to_pixels(keep, target.grid, target.patch_size)  # (n, 1, H, W)
        out = []
        for chunk in keep.split(batch_size):
            idx = torch.full((len(chunk),), i, device=target.device, dtype=torch.long)
            out.append(target.activations(torch.where(chunk, image, base), idx))
        return torch.cat(out).double().cpu().numpy()

    return model


def _valid_l1_reg(value) -> bool:
    """shap's ``l1_reg`` choices: a bool, an alpha >= 0, ``auto``/``aic``/``bic`` or ``num_features(N)``."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return value >= 0
    return isinstance(value, str) and (value in ("auto", "aic", "bic") or re.fullmatch(r"num_features\(\d+\)", value))


@register_attributor("kernel_shap")
class KernelShapAttributor(Attributor):
    """KernelSHAP (shap KernelExplainer) over patches: a missing patch shows the baseline image.

    One explainer per unit with the all-missing coalition (the baseline image) as background; the scores
    are the Shapley-value estimates of the all-present coalition, so they sum to
    z_k(image) - z_k(baseline). Coalitions are sampled from each unit's seed.

    Args:
        n_samples: coalitions evaluated per unit (shap's ``nsamples``; default 256).
        l1_reg: shap's feature selection before the regression (default ``False``: every patch gets an
            estimate; shap's own default ``"num_features(10)"`` would leave all but 10 patches at 0).
        batch_size: composed images per forward pass (default 64).
    """

    deterministic = False

    def __init__(self, n_samples: int = 256, l1_reg: bool | str | float = False, batch_size: int = 64):
        self.n_samples = positive_int(n_samples, "n_samples")
        if not _valid_l1_reg(l1_reg):
            raise ValueError(
                f"l1_reg must be false, true, a number >= 0, 'auto', 'aic', 'bic' or 'num_features(N)'; got {l1_reg!r}"
            )
        self.l1_reg = l1_reg
        self.batch_size = positive_int(batch_size, "batch_size")

    def cost(self, n_patches: int) -> Cost:
        # at most n_samples coalitions, plus the background (baseline image) and the explained image
        return Cost(forward=self.n_samples + 2, backward=0)

    def attribute(self, target) -> torch.Tensor:
        n_players = target.n_patches
        maps = []
        for i, seed in enumerate(target.seeds):
            explainer = shap.KernelExplainer(
                coalition_model(target, i, self.batch_size), np.zeros((1, n_players)), link="identity"
            )
            with seeded_numpy_rng(seed):
                phi = explainer.shap_values(
                    np.ones((1, n_players)), nsamples=self.n_samples, l1_reg=self.l1_reg, silent=True
                )
            maps.append(torch.as_tensor(np.asarray(phi, dtype=np.float64).reshape(target.grid)))
        return torch.stack(maps).to(device=target.device, dtype=torch.float32)
