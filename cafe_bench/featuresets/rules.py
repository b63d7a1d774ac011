"""The rules a feature set is drawn by, and the error of a feature set that cannot be built; kept free of torch so
that the command line can describe them without loading a model (the rule itself is described in
:mod:`cafe_bench.featuresets.stream`)."""

from __future__ import annotations

from dataclasses import dataclass

from cafe_bench.errors import CafeBenchError


class FeatureSetError(CafeBenchError):
    """A feature set that cannot be built as asked: too few qualifying features, bad rules, layers or SAEs."""


@dataclass(frozen=True)
class SelectionRules:
    """How units are chosen (the full rule is in :mod:`cafe_bench.featuresets.stream`'s docstring)."""

    per_layer: int = 8
    """Features drawn per layer."""
    images_per_feature: int = 2
    """Top-activating images per feature (one unit each)."""
    seed: int = 0
    """Seed of the feature draw (``default_rng([seed, layer])``)."""
    min_frequency: float = 1e-4
    """Lower edge of the firing-frequency band (share of patch tokens where the feature is > 0)."""
    max_frequency: float = 0.05
    """Upper edge of the band."""
    min_images: int | None = None
    """A feature is alive when it peaks > 0 on at least this many images; None: ``images_per_feature``."""

    def __post_init__(self):
        if self.min_images is None:
            object.__setattr__(self, "min_images", self.images_per_feature)
        for name in ("per_layer", "images_per_feature", "min_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FeatureSetError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise FeatureSetError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.min_images < self.images_per_feature:
            raise FeatureSetError(
                f"min_images {self.min_images} is below images_per_feature {self.images_per_feature}: "
                "a feature could be drawn without enough images"
            )
        if not 0 < self.min_frequency <= self.max_frequency <= 1:
            raise FeatureSetError(
                f"frequency band [{self.min_frequency}, {self.max_frequency}] must satisfy 0 < min <= max <= 1"
            )
