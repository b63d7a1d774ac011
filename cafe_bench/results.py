"""Reading finished runs back: one or more result directories as one table, checked for consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cafe_bench.errors import CafeBenchError
from cafe_bench.schema import (
    IDENTITY_FIELDS,
    KEY_FIELDS,
    RECORD_FIELDS,
    SCHEMA_VERSION,
    UNIT_FIELDS,
    RunConfig,
    SchemaError,
    check_version,
    unit_key,
)
from cafe_bench.store import RESULTS, RUN, latest, read_records

MERGED_FIELDS = ("methods", "method_params", "method_costs", "method_sources", "protocols")
"""Run-config fields that are unioned when runs of different methods or protocols share one table."""
MIXABLE = ("seed", "layers", "units")
"""What ``allow_mixed`` lets differ between merged runs (never the curve rules or the suite)."""


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
        check_version(doc, str(run_path))
        RunConfig.from_dict(doc["config"], f"{run_path}: config")
        rows = read_records(results, required=RECORD_FIELDS)  # names file and line
        versions = {row["schema_version"] for row in rows}
        if versions - {SCHEMA_VERSION}:
            check_version({"schema_version": min(versions - {SCHEMA_VERSION})}, f"a record of {results}")
        records = latest(rows)
    except SchemaError as exc:
        raise ResultsError(str(exc)) from None
    except CafeBenchError as exc:
        raise ResultsError(str(exc)) from None
    if not records:
        raise ResultsError(f"{results}: holds no records")
    return pd.DataFrame(records), doc


def unit_set(records: pd.DataFrame) -> set:
    """The units (layer, feature, image_id, token) that ``records`` cover."""
    return set(map(tuple, records[list(UNIT_FIELDS)].itertuples(index=False, name=None)))


def _describe(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def config_difference(a: dict, b: dict, keys) -> str | None:
    """``"KEY A vs B"`` for the first of ``keys`` where configs ``a`` and ``b`` differ, or None."""
    for key in keys:
        if a.get(key) != b.get(key):
            return f"{key} {_describe(a.get(key))} vs {_describe(b.get(key))}"
    return None


def _unit_difference(units: dict, first_units: dict) -> str | None:
    """How two runs' unit sets differ on a protocol both ran, or None (``units``: protocol -> unit set)."""
    for protocol in sorted(set(units) & set(first_units)):
        mine, theirs = units[protocol], first_units[protocol]
        if mine != theirs:
            return (
                f"unit set of {protocol} ({len(mine)} units vs {len(theirs)}, {len(mine ^ theirs)} differ; "
                "an unfinished run?)"
            )
    return None


def read_runs(run_dirs, allow_mixed: bool = False, hint: bool = True) -> tuple[pd.DataFrame, dict]:
    """Records of several runs (e.g. built-in methods and a plugin) as one table, and one run document whose
    config lists every run's methods and protocols.

    The runs must agree on suite, suite version and files, baseline, steps and curve rules, and (unless
    ``allow_mixed``) on seed, layers and unit set; a unit x method x protocol stored twice is refused. Raises
    ResultsError naming what differs, e.g. ``seed 0 vs 1`` (with ``hint``, default True, the message names the
    ``--allow-mixed`` option of ``leaderboard``).
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ResultsError("no results directory given")
    frames, first_doc, first_units = [], None, None
    for run_dir in run_dirs:
        records, doc = read_run(run_dir)
        units = {p: unit_set(part) for p, part in records.groupby("protocol")}
        if first_doc is None:
            first_doc, first_units = json.loads(json.dumps(doc)), units
        else:
            config, first = doc["config"], first_doc["config"]
            differ = config_difference(config, first, IDENTITY_FIELDS)
            if differ is None and not allow_mixed:
                differ = config_difference(config, first, MIXABLE) or _unit_difference(units, first_units)
            if differ is not None:
                mixable = differ.split()[0] in (*MIXABLE, "unit") and hint and not allow_mixed
                advice = " (pass --allow-mixed to table runs of different seeds or units)" if mixable else ""
                raise ResultsError(f"{run_dir} and {run_dirs[0]} cannot share one table: {differ}{advice}")
            for key in MERGED_FIELDS:
                if isinstance(first[key], dict):
                    first[key] = {**first[key], **config[key]}
                else:
                    first[key] = list(dict.fromkeys([*first[key], *config[key]]))
        frames.append(records.assign(run_dir=str(run_dir)))
    table = pd.concat(frames, ignore_index=True)
    dup = table.duplicated(list(KEY_FIELDS), keep=False)
    if dup.any():
        row = table[dup].iloc[0]
        key = ", ".join(f"{f}={row[f]}" for f in KEY_FIELDS)
        raise ResultsError(f"{row['run_dir']}: record ({key}) is stored in more than one run")
    return table, first_doc


def check_board_source(run_dirs, records: pd.DataFrame) -> None:
    """Raise ResultsError unless every run is finished and no record failed: a board is what later runs are
    gated against, so it must not bake in missing units or failures."""
    from cafe_bench.schema import status_kind

    for run_dir in map(Path, run_dirs):
        status = json.loads((run_dir / RUN).read_text()).get("status")
        if status != "finished":
            raise ResultsError(
                f"{run_dir}: the run is {status!r}, not finished; complete it with `cafe-bench run ... --resume` "
                "before saving a board"
            )
    failed = records[records["status"].map(status_kind) == "failed"]
    if len(failed):
        methods = ", ".join(dict.fromkeys(failed["method"]))
        raise ResultsError(
            f"{len(failed)} failed record(s) ({methods}); a board must not hold failures: fix the method, rerun with "
            "--resume, then save"
        )


__all__ = ["check_board_source", "ResultsError", "read_run", "read_runs", "unit_set", "unit_key", "config_difference"]
