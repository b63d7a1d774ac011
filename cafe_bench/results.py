"""Reading finished runs back: one or more result directories as one table, checked for consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cafe_bench.errors import CafeBenchError
from cafe_bench.store import KEY_FIELDS, RESULTS, RUN, latest, read_records

RECORD_FIELDS = (*KEY_FIELDS, "suite", "baseline", "steps", "fractions", "curve", "auc", "clean_activation", "status")
"""Fields every stored record must have."""
COMPARABLE = ("suite", "suite_files", "baseline", "blur_sigma", "steps", "normalisation", "auc")
"""Config entries that must agree for records of several runs to share one table."""


class ResultsError(CafeBenchError):
    """A results directory that cannot be used: missing, empty, damaged or inconsistent."""


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """(records, run.json document) of one run directory; raises ResultsError naming the file and line."""
    run_dir = Path(run_dir)
    results, run_path = run_dir / RESULTS, run_dir / RUN
    for path in (results, run_path):
        if not path.is_file():
            raise ResultsError(f"{path}: no such file; give a directory written by `cafe-bench run --out`")
    try:
        doc = json.loads(run_path.read_text())
    except ValueError:
        raise ResultsError(f"{run_path}: not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ResultsError(f"{run_path}: lacks the run config")
    try:
        records = latest(read_records(results, required=RECORD_FIELDS))
    except CafeBenchError as exc:
        raise ResultsError(str(exc)) from None
    if not records:
        raise ResultsError(f"{results}: holds no records")
    return pd.DataFrame(records), doc


def read_runs(run_dirs) -> tuple[pd.DataFrame, dict]:
    """Records of several runs (e.g. built-in methods and a plugin) as one table, and the first run's document.

    The runs must agree on suite, suite files, baseline, steps and curve rules; a unit x method x protocol
    stored twice is refused.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ResultsError("no results directory given")
    frames, first_doc = [], None
    for run_dir in run_dirs:
        records, doc = read_run(run_dir)
        if first_doc is None:
            first_doc = doc
        else:
            for key in COMPARABLE:
                if doc["config"].get(key) != first_doc["config"].get(key):
                    raise ResultsError(
                        f"{run_dir / RUN}: {key} differs from {run_dirs[0] / RUN} "
                        f"({json.dumps(doc['config'].get(key))} vs "
                        f"{json.dumps(first_doc['config'].get(key))}); runs of different configs "
                        "cannot share one table"
                    )
        frames.append(records.assign(run_dir=str(run_dir)))
    table = pd.concat(frames, ignore_index=True)
    dup = table.duplicated(list(KEY_FIELDS), keep=False)
    if dup.any():
        row = table[dup].iloc[0]
        key = ", ".join(f"{f}={row[f]}" for f in KEY_FIELDS)
        raise ResultsError(f"{row['run_dir']}: record ({key}) is stored in more than one run")
    return table, first_doc
