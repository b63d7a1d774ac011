"""Suite manifests: JSON files naming a suite's model, SAEs, feature set and the SHA-256 of each file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cafe_bench.errors import ChecksumError, SuiteError

REQUIRED = {
    "name": str,
    "version": (str, int),
    "files": dict,
    "feature_set": str,
    "model": dict,
    "saes": dict,
    "scenes": dict,
    "protocol": dict,
}
"""Top-level fields of ``suite.json`` and their JSON types."""
REQUIRED_PROTOCOL = {"baseline": str, "steps": int}


def read_manifest(path: Path) -> dict:
    """The parsed ``suite.json`` at ``path``; raises SuiteError naming the first missing or mistyped field."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise SuiteError(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise SuiteError(f"{path}: not a JSON object")
    for fields, where in ((REQUIRED, doc), (REQUIRED_PROTOCOL, doc.get("protocol"))):
        prefix = "" if where is doc else "protocol."
        for name, kind in fields.items():
            if name not in where:
                raise SuiteError(f"{path}: suite manifest lacks field '{prefix}{name}'")
            if not isinstance(where[name], kind) or isinstance(where[name], bool):
                raise SuiteError(f"{path}: field '{prefix}{name}' has the wrong type ({type(where[name]).__name__})")
    for layer, spec in doc["saes"].items():
        if not str(layer).isdigit() or not isinstance(spec, dict) or "weights" not in spec:
            raise SuiteError(f"{path}: saes[{layer!r}] must be a layer number mapping to an SAE spec with 'weights'")
    if "weights" not in doc["model"]:
        raise SuiteError(f"{path}: suite manifest lacks field 'model.weights'")
    return doc


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: str) -> None:
    """Raise ChecksumError if ``path`` is missing or its SHA-256 differs from ``expected``."""
    if not path.exists():
        raise ChecksumError(
            f"{path}: file listed in the suite manifest is missing; reinstall cafe_bench or rebuild the suite"
        )
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: checksum mismatch (expected sha256 {expected[:12]}…, got {actual[:12]}…); "
            "the file was changed: reinstall cafe_bench or rebuild the suite"
        )
