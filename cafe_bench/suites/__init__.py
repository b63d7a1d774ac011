"""Suites: a model, its SAEs, a frozen feature set and protocol defaults, named by a checksummed manifest.

A suite is a directory with ``suite.json`` (see ``tiny/suite.json``); built-in suites ship inside the
package. ``load_suite`` accepts a built-in name or the path of such a directory.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from cafe_bench.errors import CafeBenchError, UnknownNameError
from cafe_bench.featuresets.builder import read_feature_set
from cafe_bench.protocols.baselines import make_baseline
from cafe_bench.scenes import SceneConfig, make_images
from cafe_bench.suites.manifest import read_manifest, verify_file
from cafe_bench.target import Target, Unit

BUILTIN_SUITES = {"tiny": Path(__file__).parent / "tiny"}
"""Built-in suite name -> directory."""


def list_suites() -> list[str]:
    """Names of the built-in suites."""
    return sorted(BUILTIN_SUITES)


def unit_seed(run_seed: int, unit: Unit) -> int:
    """A 63-bit seed for one unit, a pure function of the run seed and the unit key."""
    image = unit.image_id
    if isinstance(image, str):  # a file id: two 32-bit words of its SHA-256, after a marker no integer id uses
        digest = hashlib.sha256(image.encode()).digest()
        image = [2**32 - 1, int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")]
    else:
        image = [int(image)]
    entropy = [int(run_seed), unit.layer, unit.feature, *image, unit.token]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Suite:
    """A loaded suite. Files are verified against the manifest when loaded; the model loads lazily.

    Args:
        path: the suite directory.
        device: ``cpu`` or ``cuda``; where the model, SAEs and targets live.
    """

    def __init__(self, path: Path, device: str = "cpu"):
        self.path = Path(path)
        self.manifest = read_manifest(self.path / "suite.json")
        self.name = self.manifest["name"]
        self.version = str(self.manifest["version"])
        """Released suites never change in place: changing what a suite holds means a new version or name."""
        self.device = torch.device(device)
        for file_name, digest in self.manifest["files"].items():
            verify_file(self.path / file_name, digest)
        self.feature_set = read_feature_set(self.path / self.manifest["feature_set"])
        self.layers = sorted(int(layer) for layer in self.manifest["saes"])
        self.protocol_defaults = dict(self.manifest["protocol"])

    @property
    def baseline_options(self) -> dict:
        """The suite's protocol settings a baseline may use (e.g. ``blur_sigma``, default 4.0)."""
        return {
            "blur_sigma": 4.0,
            **{k: v for k, v in self.protocol_defaults.items() if k not in ("baseline", "steps")},
        }

    @property
    def hashes(self) -> dict:
        """SHA-256 of every file of the suite (model weights, SAE weights, feature set)."""
        return dict(self.manifest["files"])

    @cached_property
    def backbone(self):
        """The ViT adapter with the suite's weights, in eval mode, on ``device``."""
        from cafe_bench.models import build_backbone

        spec = self.manifest["model"]
        return build_backbone(spec, self.path / spec["weights"]).to(self.device).eval()

    @cached_property
    def saes(self) -> dict:
        """{layer: SAE} on ``device``."""
        from cafe_bench.sae import build_sae

        return {
            int(layer): build_sae(spec, self.path / spec["weights"]).to(self.device)
            for layer, spec in self.manifest["saes"].items()
        }

    def n_features(self, layer: int) -> int:
        """Dictionary size m of the SAE at ``layer``."""
        return int(self.manifest["saes"][str(layer)]["d_sae"])

    def units(self, layers=None) -> list[Unit]:
        """The frozen units, optionally only those of ``layers``."""
        if layers is not None:
            self.check_layers(layers)
        keep = None if layers is None else {int(layer) for layer in layers}
        return [Unit(**u) for u in self.feature_set["units"] if keep is None or u["layer"] in keep]

    def check_layers(self, layers) -> None:
        """Raise UnknownNameError naming the suite's layers if any of ``layers`` has no SAE."""
        bad = [layer for layer in layers if int(layer) not in self.layers]
        if bad:
            raise UnknownNameError(
                f"suite {self.name!r} has no SAE at layer {bad[0]}; valid: {', '.join(map(str, self.layers))}"
            )

    def check_unit(self, unit: Unit) -> None:
        """Raise CafeBenchError if the unit's layer, feature or token is out of range."""
        self.check_layers([unit.layer])
        m = self.n_features(unit.layer)
        if not 0 <= unit.feature < m:
            raise CafeBenchError(
                f"feature {unit.feature} out of range for the layer-{unit.layer} SAE; valid: 0..{m - 1}"
            )
        n_patches = self.backbone.n_patches
        if not 0 <= unit.token < n_patches:
            raise CafeBenchError(f"token {unit.token} out of range; valid: 0..{n_patches - 1}")

    def images(self, image_ids) -> torch.Tensor:
        """Scenes of the suite's stream, (N, 3, H, W) in [0, 1] on ``device``."""
        scenes = self.manifest["scenes"]
        arr = make_images(scenes["seed"], list(image_ids), SceneConfig(**scenes["config"]))
        return torch.from_numpy(arr).to(self.device)

    def target(self, units, baseline: str | None = None, seed: int = 0) -> Target:
        """A batch Target for ``units`` with the ``baseline`` images (default: the suite's, ``blur``)."""
        units = list(units)
        for unit in units:
            self.check_unit(unit)
        images = self.images([u.image_id for u in units])
        name = baseline or self.protocol_defaults["baseline"]
        base = make_baseline(name, images, **self.baseline_options)
        seeds = [unit_seed(seed, u) for u in units]
        return Target(self.backbone, self.saes, units, images, base, seeds, baseline_name=name)


def load_suite(name_or_path: str | Path = "tiny", device: str = "cpu") -> Suite:
    """Load a built-in suite by name or a suite directory by path, verifying every file's checksum.

    >>> suite = load_suite("tiny")      # doctest: +SKIP
    >>> len(suite.units())              # doctest: +SKIP
    96
    """
    key = str(name_or_path)
    if key in BUILTIN_SUITES:
        return Suite(BUILTIN_SUITES[key], device)
    path = Path(key)
    if (path / "suite.json").is_file():
        return Suite(path, device)
    raise UnknownNameError(f"unknown suite {key!r}; valid: {', '.join(list_suites())} or a directory with suite.json")
