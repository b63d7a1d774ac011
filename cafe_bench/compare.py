"""The regression gate: compare a new run with a committed board and list the AUCs that moved against it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cafe_bench.leaderboard import HIGHER_IS_BETTER
from cafe_bench.results import ResultsError, read_runs

PROTOCOL_KEYS = ("baseline", "blur_sigma", "steps", "normalisation", "auc")
ROW_FIELDS = ("method", "layer", "protocol", "n_units", "mean", "ci_low", "ci_high")
RULES = ("ci", "abs")


@dataclass(frozen=True)
class Regression:
    """One method x layer x protocol whose mean AUC moved against the board."""

    method: str
    layer: int
    protocol: str
    board_mean: float
    board_ci: tuple[float, float]
    mean: float

    def __str__(self) -> str:
        worse = "lower" if HIGHER_IS_BETTER.get(self.protocol, True) else "higher"
        ci = "no CI" if self.board_ci[0] is None else f"[{self.board_ci[0]:.4f}, {self.board_ci[1]:.4f}]"
        return (
            f"REGRESSION {self.method} layer {self.layer} {self.protocol}: AUC {self.mean:.4f}, {worse} than "
            f"the board's {self.board_mean:.4f} {ci} "
            f"by {abs(self.mean - self.board_mean):.4f}"
        )


def load_board(path: Path) -> dict:
    """A board written by ``cafe-bench leaderboard --save``; raises ResultsError if unreadable."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such board file") from None
    except ValueError:
        raise ResultsError(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict) or not {"config", "rows", "statistics"} <= set(doc):
        raise ResultsError(f"{path}: not a cafe_bench board (needs config, rows and statistics)")
    if not isinstance(doc["config"], dict) or not isinstance(doc["rows"], list):
        raise ResultsError(f"{path}: not a cafe_bench board (config must be an object, rows a list)")
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or not set(ROW_FIELDS) <= set(row):
            raise ResultsError(f"{path}: row {i + 1} lacks one of {', '.join(ROW_FIELDS)}")
    return doc


def check_comparable(config: dict, board_config: dict, board_path: Path) -> None:
    """Raise ResultsError naming the first difference that makes a run incomparable with the board."""
    if config.get("suite") != board_config.get("suite"):
        raise ResultsError(
            f"different suite: run {config.get('suite')!r}, board {board_config.get('suite')!r} ({board_path})"
        )
    files, board_files = config.get("suite_files", {}), board_config.get("suite_files", {})
    if files.get("features.json") != board_files.get("features.json"):
        raise ResultsError(
            f"different feature set hash: run {str(files.get('features.json'))[:12]}…, board "
            f"{str(board_files.get('features.json'))[:12]}… ({board_path})"
        )
    for name in sorted(set(files) | set(board_files)):
        if files.get(name) != board_files.get(name):
            raise ResultsError(f"different suite file {name} (sha256 differs from the board's, {board_path})")
    for key in PROTOCOL_KEYS:
        if config.get(key) != board_config.get(key):
            raise ResultsError(
                f"different protocol config {key}: run {json.dumps(config.get(key))}, board "
                f"{json.dumps(board_config.get(key))} ({board_path})"
            )


def compare(run_dirs, board_path: Path, floor: float = 0.02, rule: str = "ci") -> tuple[list[Regression], list[str]]:
    """Regressions of the runs in ``run_dirs`` against the board, and notes (rows that could not be compared).

    A row regresses when its mean AUC moved against the protocol's direction (insertion down, deletion up) by
    more than ``floor`` (default 0.02) and, with ``rule="ci"`` (default), also left the board's CI;
    ``rule="abs"`` uses the floor alone. The run's mean AUC is compared with the board's mean and CI; a board
    row without a CI (a single unit) counts as left. Raises ResultsError when no row could be compared.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be a finite number >= 0, got {floor}")
    board_doc = load_board(board_path)
    records, run_doc = read_runs(run_dirs)
    check_comparable(run_doc["config"], board_doc["config"], Path(board_path))
    ok = records[records["status"] == "ok"]
    current = ok.groupby(["method", "layer", "protocol"])["auc"].mean()
    regressions, notes, compared = [], [], 0
    for row in board_doc["rows"]:
        key = (row["method"], int(row["layer"]), row["protocol"])
        if row["n_units"] == 0:
            continue
        if key not in current.index:
            notes.append(f"not in the run: {key[0]} layer {key[1]} {key[2]}")
            continue
        compared += 1
        mean = float(current.loc[key])
        sign = 1 if HIGHER_IS_BETTER.get(key[2], True) else -1
        drop = sign * (row["mean"] - mean)  # > 0: moved against the board
        low, high = row["ci_low"], row["ci_high"]
        outside = low is None or high is None or not low <= mean <= high
        if drop > floor and (outside or rule == "abs"):
            regressions.append(Regression(*key, row["mean"], (low, high), mean))
    if not compared:
        raise ResultsError(f"no method x layer x protocol of the run is on the board {board_path}; nothing to compare")
    return regressions, notes
