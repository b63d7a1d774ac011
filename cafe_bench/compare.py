"""The regression gate: compare a new run with a committed board, unit by unit.

A run of a suite is deterministic for a fixed seed (stochastic methods draw from per-unit seeds derived from
the run seed), so a rerun reproduces every unit's AUC up to float noise. The default rule (``paired``) pairs
each unit of the run with the same unit on the board and fails a method x layer x protocol whose mean AUC
moved against the protocol's direction by more than ``tolerance``; ``unit`` fails on any single unit that
moved against it by more than ``tolerance``; ``ci`` is the between-feature rule for runs that are *not*
reruns (another seed or feature set): the run's mean AUC left the board's bootstrap CI and moved by more
than ``floor``.

A failed record and a method on one side only fail the gate under every rule; under the paired and unit
rules so do a unit missing from the run or added to it and a unit whose status changed (ok vs dead). Runs
that cannot be compared raise :class:`NotComparableError`: another suite, suite version, model or SAE weights,
steps, baseline, curve rule or method parameters under every rule; another feature set, unit list or (when
a seeded method is compared) seed under the paired and unit rules.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cafe_bench.results import ResultsError, config_difference, read_runs
from cafe_bench.schema import (
    BOARD_ROW_FIELDS,
    SCHEMA_VERSION,
    UNIT_FIELDS,
    record_key,
    status_kind,
)

RULES = ("paired", "unit", "ci")
DEFAULT_TOLERANCE = 1e-4
"""AUC tolerance of the paired and unit rules (see the README: measured rerun noise times a safety factor)."""
CURVE_FIELDS = ("baseline", "blur_sigma", "steps", "precision", "normalisation", "auc")
"""Run-config fields that change every curve; checked by every rule."""
SUITE_FIELDS = ("suite", "suite_version")
UNPAIRED_PARAMS = ("batch_size",)
"""Method parameters that only batch work (never change scores): recorded, not part of the identity."""


class NotComparableError(ResultsError):
    """The run and the board differ in what they measure; the message names the difference."""


@dataclass(frozen=True)
class Finding:
    """One reason the gate fails, for one method x layer x protocol."""

    kind: str
    """``regression``, ``failed``, ``missing``, ``added`` or ``status``."""
    method: str
    layer: int | None
    """None for a finding about the whole method (on one side only)."""
    protocol: str | None
    detail: str

    def __str__(self) -> str:
        where = "" if self.layer is None else f" layer {self.layer} {self.protocol}"
        return f"{self.kind.upper()} {self.method}{where}: {self.detail}"


@dataclass
class GateResult:
    """What ``compare`` found: the findings that fail the gate, notes, and how many rows were compared."""

    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_units: int = 0

    @property
    def passed(self) -> bool:
        return not self.findings


def load_board(path: Path) -> dict:
    """A board written by ``cafe-bench leaderboard --save``; raises ResultsError if unreadable or of an older
    schema (boards before schema 2 hold no per-unit AUCs)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such board file") from None
    except IsADirectoryError:
        raise ResultsError(f"{path}: is a directory; give the board's .json file") from None
    except ValueError:
        raise ResultsError(f"{path}: not valid JSON") from None
    needed = {"config", "rows", "statistics", "units", "unit_fields", "schema_version"}
    if not isinstance(doc, dict) or not needed - {"units", "unit_fields", "schema_version"} <= set(doc):
        raise ResultsError(f"{path}: not a cafe_bench board (needs config, rows and statistics)")
    if doc.get("schema_version", 1) != SCHEMA_VERSION or not needed <= set(doc):
        raise ResultsError(
            f"{path}: board of schema {doc.get('schema_version', 1)} without per-unit AUCs; regenerate it with "
            "`cafe-bench leaderboard RUN --save STEM` (this cafe_bench writes schema "
            f"{SCHEMA_VERSION})"
        )
    if not isinstance(doc["config"], dict) or not isinstance(doc["rows"], list) or not isinstance(doc["units"], list):
        raise ResultsError(f"{path}: not a cafe_bench board (config must be an object, rows and units lists)")
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or not set(BOARD_ROW_FIELDS) <= set(row):
            raise ResultsError(f"{path}: row {i + 1} lacks one of {', '.join(BOARD_ROW_FIELDS)}")
    if doc["unit_fields"] != [*UNIT_FIELDS, "method", "protocol", "status", "auc"]:
        raise ResultsError(f"{path}: unexpected unit_fields {doc['unit_fields']}")
    return doc


def _board_records(board: dict) -> list[dict]:
    return [dict(zip(board["unit_fields"], values, strict=True)) for values in board["units"]]


def _identity_params(params: dict) -> dict:
    return {k: v for k, v in (params or {}).items() if k not in UNPAIRED_PARAMS}


def _seeded(config: dict, method: str) -> bool:
    """Whether ``method``'s scores depend on the run seed (unknown: assume they do)."""
    return not config.get("method_sources", {}).get(method, {}).get("deterministic", False)


def check_comparable(config: dict, board_config: dict, methods, rule: str, board_path: Path) -> None:
    """Raise NotComparableError naming the first difference that makes the run incomparable with the board."""
    where = f"(board {board_path})"

    def refuse(what: str):
        raise NotComparableError(f"not comparable: {what} {where}")

    paired = rule != "ci"  # the ci rule compares runs of other seeds or feature sets of the same model and SAEs
    differ = config_difference(config, board_config, SUITE_FIELDS)
    if differ:
        refuse(differ.replace("suite_version", "suite version", 1))
    files, board_files = config.get("suite_files", {}), board_config.get("suite_files", {})
    for name in sorted(set(files) | set(board_files)):
        # a manifest suite names its feature-set file; a TOML suite records "feature_set" and the hash of its images
        feature_set = name in ("feature_set", "images") or name.startswith("features")
        if files.get(name) != board_files.get(name) and (paired or not feature_set):
            what = "feature set" if feature_set else "weights"
            refuse(f"{what} {name} differs (sha256 {str(files.get(name))[:12]} vs {str(board_files.get(name))[:12]})")
    if paired and config.get("units") != board_config.get("units"):
        refuse("explicit unit lists differ (a different feature set)")
    differ = config_difference(config, board_config, CURVE_FIELDS)
    if differ:
        refuse(differ)
    for method in methods:
        mine = _identity_params(config.get("method_params", {}).get(method))
        theirs = _identity_params(board_config.get("method_params", {}).get(method))
        if mine != theirs:
            refuse(
                f"parameters of {method}: {json.dumps(mine, sort_keys=True)} vs {json.dumps(theirs, sort_keys=True)}"
            )
    if paired and config.get("seed") != board_config.get("seed"):
        seeded = [m for m in methods if _seeded(config, m) or _seeded(board_config, m)]
        if seeded:
            refuse(f"seed {config.get('seed')} vs {board_config.get('seed')} (seeded methods: {', '.join(seeded)})")


def _unit_text(key) -> str:
    return "feature {1}, image {2}, token {3}".format(*key)


def _set_findings(result: GateResult, kind: str, keys, text: str) -> None:
    by_row = defaultdict(list)
    for key in keys:
        by_row[(key[4], key[0], key[5])].append(key)
    for (method, layer, protocol), row_keys in sorted(by_row.items(), key=lambda kv: tuple(map(str, kv[0]))):
        first = _unit_text(sorted(row_keys, key=lambda k: tuple(map(str, k)))[0])
        result.findings.append(
            Finding(kind, method, layer, protocol, f"{len(row_keys)} unit(s) {text} (first: {first})")
        )


def compare(
    run_dirs,
    board_path: Path,
    rule: str = "paired",
    tolerance: float = DEFAULT_TOLERANCE,
    floor: float = 0.02,
    methods=None,
) -> GateResult:
    """Gate the runs in ``run_dirs`` against the board at ``board_path``.

    Args:
        run_dirs: result directories (merged as by ``leaderboard``).
        board_path: a board JSON written by ``leaderboard --save``; it holds every unit's AUC.
        rule: ``paired`` (default), ``unit`` or ``ci`` (see the module docstring).
        tolerance: AUC change against the protocol's direction that the paired and unit rules allow (default
            ``DEFAULT_TOLERANCE``, measured rerun noise with a safety factor).
        floor: smallest mean AUC move the ``ci`` rule counts (default 0.02).
        methods: compare only these methods (default: every method on the board and in the run).
    Returns:
        GateResult; ``passed`` is False on any regression, failed record, missing or added unit.
    Raises:
        NotComparableError when the run and board differ in what they measure; ResultsError or ValueError on
        unusable input.
    """
    _check_options(rule, tolerance, floor)
    board = load_board(board_path)
    records, run_doc = read_runs(run_dirs, hint=False)
    return gate(records, run_doc["config"], board, rule, tolerance, floor, methods, board_path)


def _check_options(rule: str, tolerance: float, floor: float) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    for name, value in (("tolerance", tolerance), ("floor", floor)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def gate(
    records,
    config: dict,
    board: dict,
    rule: str = "paired",
    tolerance: float = DEFAULT_TOLERANCE,
    floor: float = 0.02,
    methods=None,
    board_path="the board",
) -> GateResult:
    """:func:`compare` on loaded data: ``records`` (a DataFrame of the run's records), the run's ``config`` and
    a ``board`` document from :func:`load_board`."""
    _check_options(rule, tolerance, floor)
    board_records = _board_records(board)
    board_methods = list(dict.fromkeys(r["method"] for r in board_records))
    run_methods = list(dict.fromkeys(records["method"]))
    if methods is not None:
        methods = list(dict.fromkeys(methods))
        unknown = [m for m in methods if m not in board_methods]
        if unknown:
            raise ValueError(f"method {unknown[0]!r} is not on the board; valid: {', '.join(board_methods)}")
    scope = methods if methods is not None else list(dict.fromkeys([*board_methods, *run_methods]))
    in_both = [m for m in scope if m in board_methods and m in run_methods]  # one-sided methods: missing or added
    check_comparable(config, board["config"], in_both, rule, board_path)
    result = GateResult()
    run_rows = [r for r in records.to_dict("records") if r["method"] in scope]
    board_rows = [r for r in board_records if r["method"] in scope]
    failed = [r for r in run_rows if status_kind(r["status"]) == "failed"]
    by_row = defaultdict(list)
    for r in failed:
        by_row[(r["method"], r["layer"], r["protocol"])].append(r)
    for (method, layer, protocol), rows in by_row.items():
        result.findings.append(
            Finding("failed", method, layer, protocol, f"{len(rows)} record(s) failed; first: {rows[0]['status']}")
        )
    for method in scope:
        if method not in board_methods:
            result.findings.append(Finding("added", method, None, None, "method in the run but not on the board"))
        elif method not in run_methods:
            result.findings.append(Finding("missing", method, None, None, "method on the board but not in the run"))
    if rule == "ci":
        _ci_rule(result, run_rows, board, in_both, floor)
        return result
    mine = {record_key(r): r for r in run_rows if r["method"] in in_both}
    theirs = {record_key(r): r for r in board_rows if r["method"] in in_both}
    _set_findings(result, "missing", [k for k in theirs if k not in mine], "of the board not in the run")
    _set_findings(result, "added", [k for k in mine if k not in theirs], "in the run but not on the board")
    both = [k for k in mine if k in theirs and status_kind(mine[k]["status"]) != "failed"]
    for board_kind in ("ok", "dead", "failed"):
        changed = [
            k
            for k in both
            if status_kind(theirs[k]["status"]) == board_kind and status_kind(mine[k]["status"]) != board_kind
        ]
        if changed:
            run_kind = status_kind(mine[changed[0]]["status"])
            _set_findings(result, "status", changed, f"changed status: {board_kind} on the board, {run_kind} now")
    paired = defaultdict(list)
    for k in both:
        if status_kind(mine[k]["status"]) == status_kind(theirs[k]["status"]) == "ok":
            sign = 1.0 if mine[k]["higher_is_better"] else -1.0
            paired[(k[4], k[0], k[5])].append((sign * (mine[k]["auc"] - theirs[k]["auc"]), k))
    for (method, layer, protocol), diffs in sorted(paired.items(), key=lambda kv: tuple(map(str, kv[0]))):
        result.n_rows += 1
        result.n_units += len(diffs)
        mean = sum(d for d, _ in diffs) / len(diffs)
        worst, worst_key = min(diffs, key=lambda dk: dk[0])
        n_worse = sum(d < -tolerance for d, _ in diffs)
        if (rule == "paired" and mean < -tolerance) or (rule == "unit" and n_worse):
            result.findings.append(
                Finding(
                    "regression",
                    method,
                    layer,
                    protocol,
                    f"mean AUC {'worse' if mean < 0 else 'better'} by {abs(mean):.4g} over {len(diffs)} paired units "
                    f"(tolerance {tolerance:g}); "
                    f"{n_worse} unit(s) worse, the worst by {-worst:.4g} ({_unit_text(worst_key)})",
                )
            )
    if not result.n_rows and not result.findings:
        raise ResultsError(f"no unit of the run is on the board {board_path}; nothing to compare")
    return result


def _ci_rule(result: GateResult, run_rows: list[dict], board: dict, scope, floor: float) -> None:
    """The between-feature rule: a row's mean AUC left the board row's CI and moved by more than ``floor``."""
    sums = defaultdict(list)
    for r in run_rows:
        if status_kind(r["status"]) == "ok":
            sums[(r["method"], r["layer"], r["protocol"])].append((r["auc"], r["higher_is_better"]))
    for row in board["rows"]:
        key = (row["method"], int(row["layer"]), row["protocol"])
        if row["method"] not in scope or row["n_units"] == 0:
            continue
        if key not in sums:
            result.findings.append(Finding("missing", *key, "no ok unit of this row in the run"))
            continue
        result.n_rows += 1
        aucs = [a for a, _ in sums[key]]
        result.n_units += len(aucs)
        mean = sum(aucs) / len(aucs)
        drop = (1.0 if row["higher_is_better"] else -1.0) * (row["mean"] - mean)
        low, high = row["ci_low"], row["ci_high"]
        outside = low is None or high is None or not low <= mean <= high
        if drop > floor and outside:
            ci = "no CI" if low is None else f"[{low:.4f}, {high:.4f}]"
            result.findings.append(
                Finding(
                    "regression", *key, f"mean AUC {mean:.4f} left the board's {row['mean']:.4f} {ci} by {drop:.4f}"
                )
            )
    if not result.n_rows and not result.findings:
        raise ResultsError("no method x layer x protocol of the run is on the board; nothing to compare")


__all__ = ["compare", "load_board", "GateResult", "Finding", "NotComparableError", "RULES", "DEFAULT_TOLERANCE"]
