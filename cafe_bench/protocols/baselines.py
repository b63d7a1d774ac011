"""Baseline images: what a patch becomes when it is removed (deletion) or before it is inserted (insertion).

All baselines live in pixel space ([0, 1]) and are computed per image.
"""

from __future__ import annotations

import math

import torch

from cafe_bench.errors import UnknownNameError

BASELINES = ("blur", "mean", "zero")
"""Valid baseline names; ``blur`` is the default."""


def check_baseline(name: str) -> None:
    """Raise UnknownNameError naming the valid baselines."""
    if name not in BASELINES:
        raise UnknownNameError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")


def make_baseline(name: str, images_b3hw: torch.Tensor, blur_sigma: float = 4.0) -> torch.Tensor:
    """Baseline images (B, 3, H, W) for ``images``.

    Args:
        name: ``blur`` (Gaussian blur, sigma ``blur_sigma`` px, default 4.0; reflect padding), ``mean``
            (each image's per-channel mean colour) or ``zero`` (black).
        images_b3hw: clean images in [0, 1].
        blur_sigma: standard deviation of the blur in pixels.
    """
    check_baseline(name)
    if name == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = min(2 * math.ceil(3 * blur_sigma) + 1, 2 * (min(images_b3hw.shape[-2:]) // 2) - 1)
        return gaussian_blur(images_b3hw, kernel_size=[size, size], sigma=[blur_sigma, blur_sigma])
    if name == "mean":
        return images_b3hw.mean(dim=(2, 3), keepdim=True).expand_as(images_b3hw).clone()
    return torch.zeros_like(images_b3hw)  # "zero"
