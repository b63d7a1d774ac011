"""The attributor contract: ``attribute(target) -> scores (B, gh, gw)``."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, is_dataclass
from typing import ClassVar

import torch

from cafe_bench.errors import CafeBenchError


class AttributorError(CafeBenchError):
    """An attributor raised or returned scores that break the contract."""


@dataclass(frozen=True)
class Cost:
    """Passes one unit costs: forward passes and backward passes through the model up to block L."""

    forward: int = 1
    backward: int = 0


def positive_int(value, name: str) -> int:
    """``value`` as a positive int (a method parameter); raises ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Attributor(abc.ABC):
    """Base class of every attribution method.

    Subclass it, set the class attributes, and implement :meth:`attribute` using only the public
    ``Target`` surface (``images``, ``baseline``, ``grid``, ``patch_size``, ``clean``, ``forward``; also
    ``activations``, ``feature_map``, ``pool``, ``pixel_mean`` and ``seeds``; for sharing work between units on one
    image ``distinct_images``, ``forward_distinct``, ``shared_activations``, ``has_patch_tokens``, ``patch_tokens``,
    ``activations_from_tokens`` and ``max_memory``). Configuration goes into
    ``__init__`` keyword arguments with defaults (``--method-args`` and ``get_attributor(name, **params)``
    reach them; unknown keys are refused); :meth:`params` records them in every result and they are part of
    a run's identity. A parameter that only batches work and never changes the scores is called
    ``batch_size``; it is recorded but left out of the identity.
    """

    name: ClassVar[str] = ""
    """Registry name, set by ``register_attributor``."""
    needs_grad: ClassVar[bool] = False
    """Whether the method backpropagates through the model; a method without it runs under ``torch.no_grad``."""
    deterministic: ClassVar[bool] = True
    """False if scores depend on randomness (then they must depend only on ``target.seeds``): its results then
    depend on the run seed, which becomes part of the identity that ``compare`` checks."""

    def cost(self, n_patches: int) -> Cost:
        """Passes per unit on a grid of ``n_patches`` patches (default: one forward)."""
        return Cost()

    def params(self) -> dict:
        """The method's configuration, recorded with its results (default: public instance attributes)."""
        if is_dataclass(self):
            return asdict(self)
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @abc.abstractmethod
    def attribute(self, target) -> torch.Tensor:
        """Patch scores (B, gh, gw), or pixel relevance (B, 3, H, W) / (B, H, W) that the framework pools
        to patches by summing inside each patch. Higher means more responsible for z_k."""

    def scores(self, target) -> torch.Tensor:
        """:meth:`attribute`, pooled to patches and checked: finite float (B, gh, gw) on the target's device."""
        try:
            if self.needs_grad:
                raw = self.attribute(target)
            else:
                with torch.no_grad():
                    raw = self.attribute(target)
        except CafeBenchError:
            raise
        except Exception as exc:  # a method's own bug is reported with its name, not as a crash of the run
            raise AttributorError(f"attributor {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(raw, torch.Tensor):
            raise AttributorError(f"attributor {self.name!r} returned {type(raw).__name__}, expected a Tensor")
        try:
            scores = target.pool(raw.detach())
        except ValueError as exc:
            raise AttributorError(f"attributor {self.name!r}: {exc}") from exc
        if scores.shape[0] != len(target):
            raise AttributorError(f"attributor {self.name!r} returned {scores.shape[0]} maps for {len(target)} units")
        if not scores.is_floating_point():
            raise AttributorError(f"attributor {self.name!r} returned dtype {scores.dtype}, expected floating point")
        if not torch.isfinite(scores).all():
            raise AttributorError(f"attributor {self.name!r} returned non-finite scores")
        return scores.to(device=target.device, dtype=torch.float32)
