"""The deterministic feature-set builder and the frozen, checksummed feature-set file.

Rules (all recorded in the file): draw a pool of held-out scenes; per layer, call a feature alive when it
fires on at least ``min_images`` pool images and on at least ``min_token_frequency`` of pool tokens; draw
``n_features`` alive features with a seeded generator; for each, take the ``n_images`` pool images where
it peaks highest (ties: lower image id) and, as token, the patch of its peak in that image (ties: lower
patch index, row-major).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_bench.errors import ChecksumError
from cafe_bench.scenes import make_images
from cafe_bench.schema import UNIT_FIELDS


@dataclass(frozen=True)
class FeatureSetRules:
    """Parameters of the builder."""

    n_pool: int = 256
    """Held-out scenes searched for top-activating images."""
    n_features: int = 8
    """Features drawn per layer."""
    n_images: int = 4
    """Top-activating images per feature."""
    min_images: int = 8
    """A feature must fire on at least this many pool images to be alive."""
    min_token_frequency: float = 1e-3
    """... and on at least this share of pool tokens."""
    seed: int = 0
    """Seed of the feature draw."""


def units_sha256(units: list[dict]) -> str:
    """SHA-256 of the canonical JSON of a unit list (field order fixed; string image ids stay strings)."""
    canon = json.dumps(
        [[u[f] if isinstance(u[f], str) else int(u[f]) for f in UNIT_FIELDS] for u in units], separators=(",", ":")
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def feature_set_sha256(doc: dict) -> str:
    """SHA-256 of the canonical JSON (sorted keys, compact separators) of ``doc`` without its ``sha256`` key."""
    body = {key: value for key, value in doc.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@torch.no_grad()
def pool_codes(backbone, saes: dict, images: torch.Tensor, batch_size: int = 64) -> dict[int, torch.Tensor]:
    """SAE codes of every patch token: {layer: (N, P, m)}."""
    out = {layer: [] for layer in saes}
    for start in range(0, len(images), batch_size):
        res = backbone.residuals(images[start : start + batch_size], list(saes))
        for layer, sae in saes.items():
            out[layer].append(sae.encode(res[layer][:, backbone.n_prefix_tokens :]))
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def draw_units(z: torch.Tensor, layer: int, n_features: int, rules) -> tuple[list[tuple], dict]:
    """The draw of the rule above on one layer's codes ``z`` (N, P, m): alive features by ``rules.min_images`` and
    ``rules.min_token_frequency``, ``n_features`` of them drawn by ``default_rng([rules.seed, layer])``, each with
    its ``rules.n_images`` top images (ties: lower id) at its peak token (ties: lower patch). Returns the units as
    (layer, feature, image_id, token) tuples and the layer's stats (``n_features``, ``n_alive``)."""
    per_image_max = z.amax(dim=1)  # (N, m)
    n_images_firing = (per_image_max > 0).sum(0)
    token_freq = (z > 0).float().mean(dim=(0, 1))
    alive = ((n_images_firing >= rules.min_images) & (token_freq >= rules.min_token_frequency)).nonzero()
    alive = alive.flatten().tolist()
    rng = np.random.default_rng([rules.seed, layer])
    chosen = sorted(rng.choice(alive, size=min(n_features, len(alive)), replace=False).tolist())
    units = []
    for feature in chosen:
        peaks = per_image_max[:, feature].cpu().numpy()
        order = sorted(range(len(peaks)), key=lambda i: (-peaks[i], i))[: rules.n_images]
        for image_id in sorted(order):
            token = int(torch.argmax(z[image_id, :, feature]))  # first maximum = lowest index
            units.append((int(layer), int(feature), int(image_id), token))
    return units, {"n_features": int(z.shape[-1]), "n_alive": len(alive)}


def build_feature_set(
    backbone, saes: dict, scene_seed: int, rules: FeatureSetRules = FeatureSetRules(), progress: bool = True
) -> dict:
    """Apply the rules; returns the feature-set document (rules, per-layer stats, units, checksum)."""
    device = next(backbone.parameters()).device
    images = torch.from_numpy(make_images(scene_seed, range(rules.n_pool))).to(device)
    codes = pool_codes(backbone, saes, images)
    units, stats = [], {}
    for layer in tqdm(sorted(saes), desc="feature set", disable=not progress, leave=False):
        drawn, stats[str(layer)] = draw_units(codes[layer], layer, rules.n_features, rules)
        units += [{"layer": u[0], "feature": u[1], "image_id": u[2], "token": u[3]} for u in drawn]
    return {
        "rules": asdict(rules),
        "scene_seed": scene_seed,
        "layers": stats,
        "units": units,
        "units_sha256": units_sha256(units),
    }


def write_feature_set(path: Path, doc: dict) -> None:
    """Write the feature-set document (atomic)."""
    from cafe_bench.files import write_json_atomic

    write_json_atomic(path, doc)


STREAM_FORMAT = "cafe_bench.featureset/2"
"""``format`` of files written by the streaming builder; they must carry a whole-file ``sha256``."""


def read_feature_set(path: Path) -> dict:
    """Read a feature-set file and check its units checksum and its whole-file ``sha256`` (required in files of
    ``STREAM_FORMAT``; the older scene feature sets have none). Raises ChecksumError for an edited file and
    SuiteError for one that is not a feature set at all."""
    from cafe_bench.errors import SuiteError

    try:
        doc = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        raise SuiteError(
            f"{path}: not a feature set (not valid JSON); build it with `cafe-bench featureset build`"
        ) from None
    units = doc.get("units") if isinstance(doc, dict) else None
    if not isinstance(units, list) or not all(isinstance(u, dict) and set(UNIT_FIELDS) <= set(u) for u in units):
        raise SuiteError(f"{path}: not a feature set (no list of units); build it with `cafe-bench featureset build`")
    if doc.get("format") == STREAM_FORMAT and "sha256" not in doc:
        raise ChecksumError(f"{path}: feature set lacks its sha256; the file was edited: rebuild it")
    actual = units_sha256(units)
    if actual != doc.get("units_sha256"):
        raise ChecksumError(
            f"{path}: feature-set units do not match their checksum (got {actual[:12]}…); "
            "the file was edited: rebuild it with the builder"
        )
    whole = feature_set_sha256(doc) if "sha256" in doc else None
    if whole != doc.get("sha256"):
        raise ChecksumError(
            f"{path}: feature set does not match its sha256 (got {whole[:12]}…); "
            "the file was edited: rebuild it with `cafe-bench featureset build`"
        )
    return doc
