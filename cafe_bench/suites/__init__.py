"""Suites: a model, its SAEs, an image source, a frozen feature set and protocol defaults.

A suite is a TOML spec (:mod:`cafe_bench.suites.spec`; ``photos/suite.toml``) or a directory with a checksummed
``suite.json`` manifest (``tiny``). Built-in suites ship inside the package. ``load_suite`` accepts a built-in name,
a ``.toml`` path or a suite directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from cafe_bench import DEFAULT_SUITE
from cafe_bench.errors import CafeBenchError, SuiteError, UnknownNameError
from cafe_bench.featuresets.builder import read_feature_set
from cafe_bench.protocols.baselines import make_baseline
from cafe_bench.scenes import SceneConfig
from cafe_bench.suites.manifest import read_manifest, verify_file
from cafe_bench.target import Target, Unit

BUILTIN_SUITES = {
    "relations": Path(__file__).parent / "relations",
    "tiny": Path(__file__).parent / "tiny",
    "photos": Path(__file__).parent / "photos",
}
"""Built-in suite name -> directory."""


def list_suites() -> list[str]:
    """Names of the built-in suites whose files are installed."""
    return sorted(name for name, path in BUILTIN_SUITES.items() if path.is_dir())


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


class LazySAEs(Mapping):
    """{layer: SAE}, each SAE loaded (and checked against the model's width) when first used."""

    def __init__(self, layers, load):
        self._layers = sorted(int(layer) for layer in layers)
        self._load = load
        self._loaded: dict[int, object] = {}

    def __getitem__(self, layer):
        layer = int(layer)
        if layer not in self._layers:
            raise KeyError(layer)
        if layer not in self._loaded:
            self._loaded[layer] = self._load(layer)
        return self._loaded[layer]

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def loaded(self) -> list[int]:
        """Layers whose SAE has been loaded so far."""
        return sorted(self._loaded)


class Suite:
    """A loaded suite: model, SAEs (loaded lazily, per layer), image source, frozen feature set, protocol defaults.

    Built by :func:`load_suite` from a built-in name, a suite directory (``suite.json``) or a TOML spec. Files
    are checked when the suite is loaded; the model and each SAE load on first use.
    """

    name: str
    version: str
    """Released suites never change in place: changing what a suite holds means a new version or name."""
    layers: list[int]
    protocol_defaults: dict
    feature_set: dict

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)

    @property
    def baseline_options(self) -> dict:
        """The suite's protocol settings a baseline may use (e.g. ``blur_sigma``, default 4.0)."""
        return {
            "blur_sigma": 4.0,
            **{k: v for k, v in self.protocol_defaults.items() if k not in ("baseline", "steps")},
        }

    @property
    def hashes(self) -> dict:
        """SHA-256 of everything the suite's numbers depend on (weights, SAEs, feature set, images)."""
        raise NotImplementedError

    @property
    def reference(self) -> dict | None:
        """The frozen reference of the suite's units (:mod:`cafe_bench.reference`), or None when it has none."""
        return None

    def players(self, image_id):
        """(n + 1, H, W) bool object masks and background of image ``image_id``, or None when the suite's images
        have no object masks (only procedural scenes have)."""
        return None

    @cached_property
    def backbone(self):
        """The ViT adapter with the suite's weights, in eval mode, on ``device``."""
        return self._build_backbone().to(self.device).eval()

    @cached_property
    def saes(self) -> LazySAEs:
        """{layer: SAE} on ``device``, each loaded when first used."""
        return LazySAEs(self.layers, lambda layer: self._load_sae(layer).to(self.device).eval())

    @cached_property
    def image_source(self):
        """Where the suite's images come from (:class:`cafe_bench.images.ImageSource`)."""
        return self._image_source()

    def n_features(self, layer: int) -> int:
        """Dictionary size m of the SAE at ``layer``."""
        return int(self.saes[layer].d_sae)

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
        """Raise CafeBenchError if the unit's layer, feature, image or token is out of range."""
        self.check_layers([unit.layer])
        m = self.n_features(unit.layer)
        if not 0 <= unit.feature < m:
            raise CafeBenchError(
                f"feature {unit.feature} out of range for the layer-{unit.layer} SAE; valid: 0..{m - 1}"
            )
        self.image_source.check_ids([unit.image_id])
        n_patches = self.backbone.n_patches
        if not 0 <= unit.token < n_patches:
            raise CafeBenchError(f"token {unit.token} out of range; valid: 0..{n_patches - 1}")

    def images(self, image_ids) -> torch.Tensor:
        """Images of the suite's source, preprocessed for its model: (N, 3, H, W) in [0, 1] on ``device``."""
        images = self.image_source.load(list(image_ids), self.backbone.preprocess)
        if self.device.type == "cuda":  # page-locked host memory: an asynchronous copy, no wait for the transfer
            return images.pin_memory().to(self.device, non_blocking=True)
        return images.to(self.device)

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


class ManifestSuite(Suite):
    """A suite directory with a checksummed ``suite.json`` (the built-in ``tiny``): every file verified on load.

    Args:
        path: the suite directory.
        device: ``cpu`` or ``cuda``; where the model, SAEs and targets live.
    """

    def __init__(self, path: Path, device: str = "cpu"):
        super().__init__(device)
        self.path = Path(path)
        self.manifest = read_manifest(self.path / "suite.json")
        self.name = self.manifest["name"]
        self.version = str(self.manifest["version"])
        for file_name, digest in self.manifest["files"].items():
            verify_file(self.path / file_name, digest)
        self.feature_set = read_feature_set(self.path / self.manifest["feature_set"])
        self.layers = sorted(int(layer) for layer in self.manifest["saes"])
        self.protocol_defaults = dict(self.manifest["protocol"])

    @property
    def hashes(self) -> dict:
        return dict(self.manifest["files"])

    def _build_backbone(self):
        from cafe_bench.models import build_backbone

        spec = self.manifest["model"]
        return build_backbone(spec, self.path / spec["weights"])

    def _load_sae(self, layer: int):
        from cafe_bench.sae import build_sae

        spec = self.manifest["saes"][str(layer)]
        return build_sae(spec, self.path / spec["weights"])

    def n_features(self, layer: int) -> int:
        return int(self.manifest["saes"][str(layer)]["d_sae"])

    @cached_property
    def reference(self) -> dict | None:
        from cafe_bench.reference import read_reference

        name = self.manifest.get("reference")
        return None if name is None else read_reference(self.path / name)

    def players(self, image_id):
        from cafe_bench.scenes import make_scene
        from cafe_bench.shapley import player_masks

        scenes = self.manifest["scenes"]
        return player_masks(make_scene(scenes["seed"], int(image_id), SceneConfig(**scenes["config"])).masks)

    def _image_source(self):
        from cafe_bench.images import ScenesSource

        scenes = self.manifest["scenes"]
        n_pool = int(self.feature_set.get("rules", {}).get("n_pool", 0))
        n_images = max([n_pool] + [int(u["image_id"]) + 1 for u in self.feature_set["units"]])
        return ScenesSource(scenes["seed"], n_images, SceneConfig(**scenes["config"]))


def check_run_files(suite: Suite, config: dict, where) -> None:
    """Raise CafeBenchError when ``suite``'s files (weights, SAEs, feature set, reference, images) differ from the
    SHA-256s a run recorded in ``config["suite_files"]``, naming the first file that differs."""
    expected = config.get("suite_files") or {}
    actual = suite.hashes
    differ = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if expected and differ:
        raise CafeBenchError(
            f"{where}: suite {suite.name!r} here is not the build the run used ({differ[0]} differs); "
            "use the suite the run was made with"
        )


def load_suite(name_or_path: str | Path = DEFAULT_SUITE, device: str = "cpu") -> Suite:
    """Load a built-in suite by name, a suite TOML file, or a suite directory (``suite.toml`` or ``suite.json``),
    checking every field and file before any work.

    >>> suite = load_suite("tiny")      # doctest: +SKIP
    >>> len(suite.units())              # doctest: +SKIP
    96
    """
    key = str(name_or_path)
    path = BUILTIN_SUITES.get(key, Path(key))
    if path.is_dir() and (path / "suite.toml").is_file():
        path = path / "suite.toml"
    if path.is_file() and path.suffix == ".toml":
        from cafe_bench.suites.spec import read_spec
        from cafe_bench.suites.spec_suite import SpecSuite

        return SpecSuite(read_spec(path), device)
    if (path / "suite.json").is_file():
        return ManifestSuite(path, device)
    if path.suffix == ".toml":
        raise SuiteError(f"{path}: suite file not found")
    raise UnknownNameError(
        f"unknown suite {key!r}; valid: {', '.join(list_suites())}, a suite .toml file or a directory with suite.json"
    )
