"""Suite manifests: JSON files naming a suite's model, SAEs, feature set and the SHA-256 of each file."""

from __future__ import annotations

import json
from pathlib import Path

from cafe_bench.cache import file_sha256
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
NESTED = {
    "protocol": {"baseline": str, "steps": int},
    "scenes": {"seed": int, "config": dict},
    "model": {"library": str, "weights": str},
}
MODEL_FIELDS = {"open_clip": {"vision_config": dict, "mean": list, "std": list}, "timm": {"model_name": str}}
"""Fields each model library needs."""
SAE_FIELDS = {"kind": str, "weights": str, "d_in": int, "d_sae": int}
SAE_KIND_FIELDS = {"matryoshka_batchtopk": {"k": int, "group_sizes": list}}
"""Fields each SAE kind needs besides ``SAE_FIELDS``."""


def _check_fields(path: Path, where: dict, fields: dict, prefix: str = "") -> None:
    for name, kind in fields.items():
        if name not in where:
            raise SuiteError(f"{path}: suite manifest lacks field '{prefix}{name}'")
        if not isinstance(where[name], kind) or isinstance(where[name], bool):
            raise SuiteError(f"{path}: field '{prefix}{name}' has the wrong type ({type(where[name]).__name__})")


def _check_choice(path: Path, value, choices, field: str) -> None:
    if value not in choices:
        raise SuiteError(f"{path}: field '{field}' is {value!r}; valid: {', '.join(choices)}")


def read_manifest(path: Path) -> dict:
    """The parsed ``suite.json`` at ``path``, every field checked before any work starts; raises SuiteError
    naming the first missing or mistyped field, or a file the suite uses that its ``files`` does not list (and
    so would not be checksummed)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise SuiteError(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise SuiteError(f"{path}: not a JSON object")
    _check_fields(path, doc, REQUIRED)
    for section, fields in NESTED.items():
        _check_fields(path, doc[section], fields, f"{section}.")
    model = doc["model"]
    _check_choice(path, model["library"], MODEL_FIELDS, "model.library")
    _check_fields(path, model, MODEL_FIELDS[model["library"]], "model.")
    used = [doc["feature_set"], model["weights"]]
    if "reference" in doc:
        if not isinstance(doc["reference"], str):
            raise SuiteError(f"{path}: field 'reference' has the wrong type ({type(doc['reference']).__name__})")
        used.append(doc["reference"])
    for layer, spec in doc["saes"].items():
        where = f"saes.{layer}."
        if not str(layer).isdigit() or not isinstance(spec, dict):
            raise SuiteError(f"{path}: saes must map layer numbers to SAE specs, got {layer!r}")
        _check_fields(path, spec, SAE_FIELDS, where)
        _check_choice(path, spec["kind"], SAE_KIND_FIELDS, where + "kind")
        _check_fields(path, spec, SAE_KIND_FIELDS[spec["kind"]], where)
        used.append(spec["weights"])
    unlisted = [name for name in used if name not in doc["files"]]
    if unlisted:
        raise SuiteError(f"{path}: {unlisted[0]} is used by the suite but not listed (with its SHA-256) in 'files'")
    return doc


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
