"""The user's cache directory and a SHA-256 cache of files keyed by (path, size, mtime).

The directory is ``$CAFE_BENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/cafe_bench``, else ``~/.cache/cafe_bench``.
A file is hashed once; later calls return the stored digest while its size, modification and change times and inode
are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_HASHES_FILE = "sha256.json"
_memory: dict[str, dict[str, list]] = {}
"""{cache dir: {absolute path: [size, mtime_ns, ctime_ns, inode, sha256]}} loaded once per process."""


def cache_dir() -> Path:
    """Where cafe_bench keeps converted weights and file hashes (created on first use)."""
    if os.environ.get("CAFE_BENCH_CACHE"):
        return Path(os.environ["CAFE_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "cafe_bench"


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _table(directory: Path) -> dict:
    key = str(directory)
    if key not in _memory:
        try:
            _memory[key] = json.loads((directory / _HASHES_FILE).read_text())
        except (OSError, ValueError):
            _memory[key] = {}
    return _memory[key]


def cached_sha256(paths) -> list[str]:
    """SHA-256 of each file of ``paths``, hashing only files new to the cache or changed (size, mtime, ctime, inode)."""
    from cafe_bench.files import write_json_atomic

    directory = cache_dir()
    table = _table(directory)
    out, changed = [], False
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        entry = table.get(str(path))
        if entry is None or entry[:4] != key:  # ctime and inode: a copy that kept the old mtime is hashed again
            entry = [*key, file_sha256(path)]
            table[str(path)] = entry
            changed = True
        out.append(entry[4])
    if changed:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(directory / _HASHES_FILE, table)
        except OSError:
            pass  # a read-only cache only costs re-hashing next time
    return out


def path_sha256(path) -> str:
    """SHA-256 of a file, or of a directory's files: the hash of its sorted ``relative/path sha256`` lines."""
    path = Path(path)
    if path.is_file():
        return cached_sha256([path])[0]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    lines = [f"{p.relative_to(path).as_posix()} {h}\n" for p, h in zip(files, cached_sha256(files), strict=True)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()
