"""A suite described by a TOML spec (:mod:`cafe_bench.suites.spec`): files checked on load, a feature set that must
have been built on this suite's model, SAEs and images."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

from cafe_bench.errors import CafeBenchError, ChecksumError, SuiteError
from cafe_bench.featuresets.builder import read_feature_set
from cafe_bench.suites import Suite
from cafe_bench.suites.spec import SuiteSpec


def _missing(spec: SuiteSpec, what: str, path: Path, provide: str | None) -> SuiteError:
    how = provide or "put it there or edit the suite file"
    return SuiteError(f"{spec.source}: {what} {path} not found; {how}")


class SpecSuite(Suite):
    """A suite from a validated :class:`SuiteSpec`. Loading checks, before any work: the model name and image
    source kind, that every file exists (a missing one is one line saying what to provide), the feature set's
    checksum and that it was built on this model, these SAEs and these images (by SHA-256).
    """

    def __init__(self, spec: SuiteSpec, device: str = "cpu"):
        super().__init__(device)
        from cafe_bench.models.factory import check_model_name
        from cafe_bench.protocols.baselines import check_baseline

        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.layers = sorted(spec.saes)
        self.protocol_defaults = dict(spec.protocol)
        check_model_name(spec.model)
        check_baseline(spec.protocol["baseline"])
        if isinstance(spec.pretrained, Path) and not spec.pretrained.is_file():
            raise _missing(spec, "model weights", spec.pretrained, spec.provide.get("model"))
        for layer, sae in spec.saes.items():
            if not sae.path.exists():
                raise _missing(spec, f"layer-{layer} SAE", sae.path, sae.provide)
        if not spec.feature_set.is_file():
            raise _missing(spec, "feature set", spec.feature_set, spec.provide.get("feature_set"))
        try:
            self.image_source  # noqa: B018  (builds the source: a missing folder is reported now)
        except CafeBenchError as exc:  # a missing folder or list, an unknown kind: with what to provide
            provide = spec.provide.get("images")
            raise SuiteError(f"{spec.source}: images: {exc}" + (f"; {provide}" if provide else "")) from None
        self.feature_set = read_feature_set(spec.feature_set)
        self._check_feature_set()

    def _image_source(self):
        from cafe_bench.images import make_image_source

        fields = {k: v for k, v in self.spec.images.items() if k != "source"}
        return make_image_source(self.spec.images["source"], **fields)

    def _build_backbone(self):
        from cafe_bench.models import load_backbone

        return load_backbone(self.spec.model, self.spec.pretrained, **self.spec.model_kwargs)

    def _load_sae(self, layer: int):
        from cafe_bench.sae import load_sae
        from cafe_bench.sae.loading import check_sae_at_block

        spec = self.spec.saes[layer]
        sae = load_sae(spec.path, spec.format)
        check_sae_at_block(sae, self.backbone.width, spec.path, layer)
        return sae

    @cached_property
    def _sha256s(self) -> dict:
        """SHA-256 of the model's weights file (None for random weights), of each SAE's files, of the feature set
        and of each image the feature set uses; computed once, when the suite is loaded."""
        from cafe_bench.cache import path_sha256
        from cafe_bench.models.factory import pretrained_file

        weights = pretrained_file(self.spec.model, self.spec.pretrained)
        used = list(dict.fromkeys(u["image_id"] for u in self.feature_set["units"]))
        return {
            "model": None if weights is None else path_sha256(weights),
            "saes": {layer: path_sha256(self.spec.saes[layer].path) for layer in self.layers},
            "feature_set": path_sha256(self.spec.feature_set),
            "images": self.image_source.hashes(used),
        }

    @property
    def hashes(self) -> dict:
        sha = self._sha256s
        return {
            "model": sha["model"] or "random weights (seed 0)",
            **{f"sae_{layer}": digest for layer, digest in sha["saes"].items()},
            "feature_set": sha["feature_set"],
            "images": hashlib.sha256(json.dumps(sha["images"], sort_keys=True).encode()).hexdigest(),
        }

    def _check_feature_set(self) -> None:
        """Refuse a feature set built on another model, other SAEs or other images (by SHA-256)."""
        doc, where = self.feature_set, f"{self.spec.source}: feature set {self.spec.feature_set}"
        provenance = doc.get("provenance")
        if not isinstance(provenance, dict) or not isinstance(doc.get("images"), dict):
            raise SuiteError(
                f"{where} records no model, SAE and image hashes; build it with `cafe-bench featureset build`"
            )
        bad_layers = sorted({int(u["layer"]) for u in doc["units"]} - set(self.layers))
        if bad_layers:
            raise SuiteError(f"{where} has units at layer {bad_layers[0]}, where the suite has no SAE")
        if provenance.get("model") != self.spec.model:
            raise ChecksumError(
                f"{where} was built on model {provenance.get('model')!r}, the suite uses {self.spec.model!r}"
            )
        if dict(provenance.get("model_kwargs") or {}) != self.spec.model_kwargs:
            raise ChecksumError(
                f"{where} was built with model kwargs {provenance.get('model_kwargs')}, the suite uses "
                f"{self.spec.model_kwargs}"
            )
        if provenance.get("pretrained_sha256") != self._sha256s["model"]:
            raise ChecksumError(f"{where} was built on other weights of {self.spec.model} (SHA-256 differs)")
        recorded = provenance.get("saes", {})
        for layer in sorted({int(u["layer"]) for u in doc["units"]}):
            entry = recorded.get(str(layer), {})
            if entry.get("sha256") != self._sha256s["saes"][layer]:
                raise ChecksumError(f"{where} was built on another layer-{layer} SAE (SHA-256 differs)")
        want = doc["images"].get("hashes", {})
        for image_id, digest in self._sha256s["images"].items():
            if want.get(image_id) != digest:
                raise ChecksumError(f"{where} was built on another image {image_id!r} (SHA-256 differs or absent)")
