"""Suite manifests: JSON files naming a suite's model, SAEs, feature set and the SHA-256 of each file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cafe_bench.errors import ChecksumError


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


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
