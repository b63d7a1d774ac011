"""Every file cafe_bench writes goes through here: whole-file writes are atomic (a unique temporary file,
fsync, rename), appends are one write plus fsync. A reader never sees half a file, and a killed append
leaves at most one partial last line, which readers drop."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _temporary(path: Path) -> Path:
    """A unique sibling name: concurrent writers of one path never share a temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file, fsync it and rename it to ``path``; on any error the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON with sorted keys, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz_atomic(path: Path, arrays: dict) -> None:
    """Write named numpy arrays as an uncompressed ``.npz`` (readable by ``numpy.load``), atomically and
    reproducibly: entries in sorted name order with a fixed timestamp, so equal arrays give equal bytes."""
    import zipfile

    import numpy as np

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)

    write_atomic(path, write)


def append_fsync(path: Path, data: bytes) -> None:
    """Append ``data`` in one write followed by fsync."""
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
