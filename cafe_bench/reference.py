"""The frozen reference of a suite's units (``reference.json``): what the truth is where it is computable.

Per unit it holds the clean z_k, the exact single-patch occlusion effects and the non-locality score
(:mod:`cafe_bench.locality`), exact object-level Shapley values and the share of their positive mass held by
players away from the token (:mod:`cafe_bench.shapley`), and greedy oracle orders and values for insertion and
deletion (:mod:`cafe_bench.oracle`), all with the suite's default baseline. The document carries the SHA-256
of its canonical JSON; a suite refuses an edited file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cafe_bench.errors import ChecksumError

REFERENCE_FORMAT = "cafe_bench.reference/1"


def reference_sha256(doc: dict) -> str:
    """SHA-256 of the canonical JSON (sorted keys, compact separators) of ``doc`` without its ``sha256`` key."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_reference(path: Path) -> dict:
    """Read a reference file and check its format and checksum (ChecksumError for an edited file)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != REFERENCE_FORMAT:
        raise ChecksumError(f"{path}: not a reference file (format {doc.get('format')!r}, want {REFERENCE_FORMAT})")
    if reference_sha256(doc) != doc.get("sha256"):
        raise ChecksumError(f"{path}: reference does not match its sha256; the file was edited: rebuild the suite")
    return doc


def by_unit(doc: dict) -> dict:
    """{(layer, feature, image_id, token): unit entry} of a reference document."""
    return {(u["layer"], u["feature"], u["image_id"], u["token"]): u for u in doc["units"]}


def oracle_curve(entry: dict, protocol: str, counts) -> np.ndarray:
    """A unit's oracle curve at patch ``counts``, normalised by its clean z_k (as the engine's curves are)."""
    values = np.asarray(entry["oracle"][protocol]["values"], dtype=np.float64)
    return values[np.asarray(counts, dtype=np.int64)] / entry["clean"]
