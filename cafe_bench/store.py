"""The run store: ``run.json`` (config and provenance), ``results.jsonl`` (one record per unit x method x
protocol, see :mod:`cafe_bench.schema`) and ``scores.npz`` (float32 patch scores per unit x method, keyed by
the records' ``scores_key``), written per finished batch so that a killed run resumes without losing work.

While a run goes on, each batch's scores are written to ``scores/part-*.npz`` before its records are appended,
so every stored record has its scores; a finished run merges the parts into ``scores.npz``.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from cafe_bench.errors import RunConfigError
from cafe_bench.files import append_fsync, write_json_atomic, write_npz_atomic
from cafe_bench.schema import KEY_FIELDS, SCHEMA_VERSION, record_key, status_kind

RESULTS = "results.jsonl"
RUN = "run.json"
SCORES = "scores.npz"
SCORE_PARTS = "scores"
__all__ = ["KEY_FIELDS", "RESULTS", "RUN", "SCORES", "RunStore", "open_store", "read_records", "record_key"]


def is_done(record: dict) -> bool:
    """Finished for good: ok or skipped. A failed record is retried on resume."""
    return status_kind(record.get("status", "")) != "failed"


def read_scores(run_dir: Path) -> dict:
    """Every stored patch-score map of a run: ``scores_key`` -> float32 array (gh, gw)."""
    run_dir = Path(run_dir)
    paths = [run_dir / SCORES] + sorted((run_dir / SCORE_PARTS).glob("part-*.npz"))
    out = {}
    for path in paths:
        if path.is_file():
            with np.load(path) as npz:
                out.update({k: npz[k] for k in npz.files})
    return out


def latest(records: list[dict]) -> list[dict]:
    """One record per key, the last one stored (a retried failure replaces the failure), in first-seen order."""
    by_key = {}
    for record in records:
        by_key[record_key(record)] = record
    return list(by_key.values())


def _first_difference(old: dict, new: dict) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {json.dumps(old.get(key))} there, {json.dumps(new.get(key))} now"
    return "unknown difference"


def read_records(path: Path, repair: bool = False, required: tuple[str, ...] = ()) -> list[dict]:
    """Records of a results file. A partial last line (a killed write) is ignored with a warning, and
    cut off when ``repair`` is true; a bad line elsewhere, or a record without one of the ``required``
    fields, raises RunConfigError naming file and line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        last = i == len(lines) - 1  # no newline after it: the write was cut
        try:
            if last:
                raise ValueError("no newline")
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            records.append(record)
            good_bytes += len(line) + 1
        except ValueError:
            if last:
                warnings.warn(f"{path}:{i + 1}: ignoring a partially written last line", stacklevel=2)
                if repair:
                    with open(path, "r+b") as fh:
                        fh.truncate(good_bytes)
                break
            raise RunConfigError(f"{path}:{i + 1}: not a JSON record; the file is damaged") from None
        missing = [f for f in required if f not in records[-1]]
        if missing:
            raise RunConfigError(f"{path}:{i + 1}: record lacks field(s) {', '.join(missing)}")
    return records


class RunStore:
    """An output directory of one run. Use :func:`open_store` to create or resume it."""

    def __init__(self, out_dir: Path | None, done: set):
        self.out_dir = None if out_dir is None else Path(out_dir)
        """None keeps nothing on disk (an in-memory run)."""
        self.done = done
        """Keys of the records already stored."""

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS

    def append(self, records: list[dict], scores: dict | None = None) -> None:
        """Store ``scores`` (``scores_key`` -> (gh, gw) map) as one part file, then append the records in one
        write followed by fsync. A killed write leaves whole lines of the batch and at most one partial last
        line, which readers drop; the missing records are recomputed on resume."""
        if not records:
            return
        if self.out_dir is not None:
            if scores:
                parts = self.out_dir / SCORE_PARTS
                parts.mkdir(exist_ok=True)
                arrays = {k: np.asarray(v, dtype=np.float32) for k, v in scores.items()}
                # named in time order, so that a later part (a retried unit) wins when parts are merged
                write_npz_atomic(parts / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz", arrays)
            payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
            append_fsync(self.results_path, payload)
        self.done.update(record_key(r) for r in records if is_done(r))

    def merge_scores(self) -> None:
        """Merge the part files into ``scores.npz`` (atomic), then remove the parts."""
        folder = self.out_dir / SCORE_PARTS
        if not folder.is_dir():
            return
        if any(folder.glob("part-*.npz")):
            write_npz_atomic(self.out_dir / SCORES, read_scores(self.out_dir))
        shutil.rmtree(folder)  # the merged parts and any temporary file a killed write left behind

    def update_run(self, **fields) -> None:
        """Merge ``fields`` into run.json (atomic rewrite)."""
        path = self.out_dir / RUN
        doc = json.loads(path.read_text())
        doc.update(fields)
        write_json_atomic(path, doc)

    def records(self) -> list[dict]:
        """The stored records, the last one per key."""
        return latest(read_records(self.results_path))


def check_out_dir(out_dir: Path, config: dict, resume: bool) -> None:
    """Raise RunConfigError if ``out_dir`` holds a different run, or this run without ``resume``. Writes nothing."""
    out_dir = Path(out_dir)
    run_path, results_path = out_dir / RUN, out_dir / RESULTS
    if out_dir.exists() and not out_dir.is_dir():
        raise RunConfigError(f"--out {out_dir} is a file; give a directory")
    if run_path.exists():
        try:
            old_doc = json.loads(run_path.read_text())
        except ValueError:
            raise RunConfigError(f"{run_path}: not valid JSON; choose another --out") from None
        if not isinstance(old_doc, dict) or old_doc.get("schema_version", 1) != SCHEMA_VERSION:
            raise RunConfigError(f"{out_dir} holds a run of an older cafe_bench (another schema); choose another --out")
        old = old_doc.get("config", {})
        new = json.loads(json.dumps(config))
        if old != new:
            raise RunConfigError(
                f"{out_dir} holds a run of a different config ({_first_difference(old, new)}); choose another --out"
            )
        if not resume:
            raise RunConfigError(
                f"{out_dir} already holds this run; pass --resume to continue it or choose another --out"
            )
    elif results_path.exists():
        raise RunConfigError(f"{results_path} exists without {RUN}; choose another --out")


def open_store(out_dir: Path, config: dict, provenance: dict, resume: bool) -> RunStore:
    """Create or resume the run in ``out_dir`` (checked by :func:`check_out_dir` and read before any write).

    On resume, the provenance of earlier sessions is kept under ``previous_sessions``.
    """
    check_out_dir(out_dir, config, resume)
    out_dir = Path(out_dir)
    run_path = out_dir / RUN
    previous = json.loads(run_path.read_text()) if run_path.exists() else {}
    done = {record_key(r) for r in latest(read_records(out_dir / RESULTS)) if is_done(r)}  # raises if damaged
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        sessions = previous.get("previous_sessions", [])
        if previous:
            sessions = [
                *sessions,
                {k: previous.get(k) for k in ("provenance", "status", "wall_time_s", "method_time_s")},
            ]
        doc = {
            "schema_version": SCHEMA_VERSION,
            "config": config,
            "provenance": provenance,
            "status": "running",
            "started": previous.get("started", provenance.get("date")),
            "previous_sessions": sessions,
        }
        write_json_atomic(run_path, doc)
        with warnings.catch_warnings():  # already warned above
            warnings.simplefilter("ignore")
            read_records(out_dir / RESULTS, repair=True)  # cut a partial last line before appending
    except OSError as exc:
        raise RunConfigError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    return RunStore(out_dir, done)
