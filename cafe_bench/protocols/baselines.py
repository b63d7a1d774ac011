"""The baseline registry: what a patch becomes when it is removed (deletion) or before it is inserted
(insertion).

A baseline is a function ``(images_b3hw, **options) -> (B, 3, H, W)`` in pixel space ([0, 1]), computed per
image, registered by name. ``options`` are the suite's protocol settings (e.g. ``blur_sigma``); a baseline
takes those it needs and ignores the rest.

A removed patch shows the baseline image there. A baseline whose fill depends on *which* patches are removed
(``road``, ROAD's noisy linear imputation, :mod:`cafe_bench.protocols.road`) registers an ``impute`` function as well,
``(images_n3hw, removed_n1hw, baseline_n3hw) -> perturbed images``; the curve engine calls it for every
perturbed image, so such a baseline needs no change to the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cafe_bench.errors import UnknownNameError

_BASELINES: dict[str, Callable] = {}
_IMPUTERS: dict[str, Callable] = {}


def register_baseline(name: str, impute: Callable | None = None):
    """Function decorator: register a baseline under ``name`` (a different function under a taken name is
    refused), with an optional mask-dependent ``impute`` (see the module docstring)."""

    def wrap(fn):
        if name in _BASELINES and _BASELINES[name] is not fn:
            raise ValueError(f"baseline name {name!r} is already registered")
        _BASELINES[name] = fn
        if impute is not None:
            _IMPUTERS[name] = impute
        return fn

    return wrap


def replace_patches(images_n3hw: torch.Tensor, removed_n1hw: torch.Tensor, baseline_n3hw: torch.Tensor):
    """The default removal: removed pixels show the baseline image, the others the image."""
    return torch.where(removed_n1hw, baseline_n3hw, images_n3hw)


def imputer(name: str | None) -> Callable:
    """How baseline ``name`` fills removed patches: its registered ``impute``, else :func:`replace_patches`."""
    return _IMPUTERS.get(name, replace_patches)


def list_baselines() -> list[str]:
    """Names of the registered baselines: ``blur`` (the default of the built-in suites), ``mean``, ``road`` (noisy
    linear imputation of the removed patches), ``zero``, and any registered since."""
    return sorted(_BASELINES)


def check_baseline(name: str) -> None:
    """Raise UnknownNameError naming the valid baselines."""
    if name not in _BASELINES:
        raise UnknownNameError(f"unknown baseline {name!r}; valid: {', '.join(list_baselines())}")


def make_baseline(name: str, images_b3hw: torch.Tensor, **options) -> torch.Tensor:
    """Baseline images (B, 3, H, W) for clean ``images_b3hw`` in [0, 1], by the registered baseline ``name``.

    >>> make_baseline("zero", torch.ones(1, 3, 4, 4)).sum().item()
    0.0
    """
    check_baseline(name)
    return _BASELINES[name](images_b3hw, **options)


@register_baseline("blur")
def blur(images_b3hw: torch.Tensor, blur_sigma: float = 4.0, **_) -> torch.Tensor:
    """Gaussian blur, sigma ``blur_sigma`` px (default 4.0), reflect padding (torchvision)."""
    from torchvision.transforms.functional import gaussian_blur

    size = min(2 * math.ceil(3 * blur_sigma) + 1, 2 * (min(images_b3hw.shape[-2:]) // 2) - 1)
    return gaussian_blur(images_b3hw, kernel_size=[size, size], sigma=[blur_sigma, blur_sigma])


@register_baseline("mean")
def mean_colour(images_b3hw: torch.Tensor, **_) -> torch.Tensor:
    """Each image's per-channel mean colour."""
    return images_b3hw.mean(dim=(2, 3), keepdim=True).expand_as(images_b3hw).clone()


@register_baseline("zero")
def zero(images_b3hw: torch.Tensor, **_) -> torch.Tensor:
    """Black."""
    return torch.zeros_like(images_b3hw)


from cafe_bench.protocols import road as _road  # noqa: E402, F401  (registers ``road``; imports register_baseline)
