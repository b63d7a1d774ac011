"""Regenerate the README's generated sections from committed records and benchmark JSON, so that every
figure in them comes from a file in the repository:

- ``board``: the default run's table, from ``leaderboards/tiny/`` (the committed run's records);
- ``timings``: wall time and time per method, from ``leaderboards/tiny/run.json``;
- ``gate``: rerun noise and what the regression gate detects, from ``benchmarks/results/tolerance.json`` and
  ``benchmarks/results/gate_thresholds.json``;
- ``completeness``: integrated gradients' completeness on ``tiny``, from
  ``benchmarks/results/ig_completeness.json``.

    python scripts/update_readme.py            # rewrite README.md in place
    python scripts/update_readme.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- begin generated: (\w+)[^>]*-->\n)(.*?)(<!-- end generated: \2 -->)", re.S)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def board() -> str:
    from cafe_bench.leaderboard import render, summarize
    from cafe_bench.results import read_run

    records, _ = read_run(ROOT / "leaderboards" / "tiny")
    return render(summarize(records), "md", by="layer")


def timings() -> str:
    doc = _json(ROOT / "leaderboards" / "tiny" / "run.json")
    prov = doc["provenance"]
    per = sorted(doc["method_time_s"].items(), key=lambda kv: -kv[1])
    methods = ", ".join(f"{m} {t:.1f} s" for m, t in per)
    return (
        f"From the committed run record (`leaderboards/tiny/run.json`, {prov['date'][:10]}, {prov['device']}, "
        f"{prov['torch_threads']} torch threads, torch {prov['libraries']['torch']}): the default run of every "
        f"built-in method took **{doc['wall_time_s']:.1f} s** in process (attribution and curves of "
        f"{len(doc['config']['methods'])} methods × {len(doc['config']['protocols'])} protocols × "
        f"{_n_units(doc)} units). Time per method (attribution and its curves): {methods}.\n"
    )


def _n_units(doc: dict) -> int:
    from cafe_bench.results import read_run

    records, _ = read_run(ROOT / "leaderboards" / "tiny")
    return len(records[["layer", "feature", "image_id", "token"]].drop_duplicates())


def gate() -> str:
    from cafe_bench.compare import DEFAULT_TOLERANCE

    tol = _json(RESULTS / "tolerance.json")
    thr = _json(RESULTS / "gate_thresholds.json")
    cond = {c["name"]: c for c in tol["conditions"]}
    lines = [
        f"**Tolerance.** Measured rerun noise of the per-unit AUCs on `tiny` (all 10 methods, "
        f"{tol['n_records']} records; {tol['date']}, {tol['machine']}, `scripts/measure_tolerance.py`):",
        "",
        "| rerun | max per-unit \\|ΔAUC\\| | max \\|Δ mean AUC\\| of a method × layer × protocol | units that moved |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("rerun", "identical rerun, another process"),
        ("threads1", "1 torch thread instead of 2"),
        ("batches", "other batch composition (`unit_batch` 8, `forward_batch` 64)"),
    ):
        c = cond[name]
        lines.append(f"| {label} | {c['max_unit']:.2g} | {c['max_row_mean']:.2g} | {c['n_units_moved']} |")
    lines += [
        "",
        f"The default `--tolerance` is **{DEFAULT_TOLERANCE:g}** AUC, {tol['safety_note']} CPU vs CUDA is not "
        "measured yet (no GPU was available): on CUDA, TF32 and attention kernels change the last digits, so "
        "compare a CUDA run against a CUDA board, or widen `--tolerance` after measuring.",
        "",
        "**What the gate catches** (mutations of the committed `tiny` run, each a test in `tests/test_gate.py`; "
        f"detection thresholds from `scripts/measure_gate.py`, {thr['date']}):",
        "",
        "| mutation | `compare` exit |",
        "|---|---|",
        "| a method raises on every unit / on one unit | 1 (`FAILED`, per method × layer × protocol) |",
        "| one unit dropped / added / its status changed | 1 (`MISSING` / `ADDED` / `STATUS`) |",
        "| a plugin's next release blends its maps with a little seeded noise | 1 (`REGRESSION`; the version is "
        "recorded, not refused) |",
        "| every unit of one method × layer × protocol worse by 0.02, 0.05 or 0.2 (both protocols) | 1 |",
        "| seed changed (a seeded method compared) / another feature set, suite version, model or SAE hash, "
        "steps, baseline or method parameter | 2, one line naming the difference |",
        "| identical rerun; rerun with 1 torch thread; an improvement | 0 |",
        "",
        "Smallest uniform worsening of one method × layer × protocol that each rule flags, over all "
        f"{thr['paired']['n_rows']} rows of the committed run:",
        "",
        "| rule | median | max | rows missed at 0.02 | at 0.05 | at 0.2 |",
        "|---|---|---|---|---|---|",
    ]
    for rule, label in (("paired", "`paired` (default)"), ("ci", "`ci` (between-feature CI, floor 0.02)")):
        r = thr[rule]
        lines.append(
            f"| {label} | {_fmt(r['median'])} | {_fmt(r['max'])} | {r['n_missed_0.02']} | {r['n_missed_0.05']} | "
            f"{r['n_missed_0.2']} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "never (up to 1)" if value is None else f"{value:.3g}"


def completeness() -> str:
    doc = _json(RESULTS / "ig_completeness.json")
    return "```json\n" + json.dumps(doc.get("summary", doc), indent=2)[:2000] + "\n```\n"


SECTIONS = {"board": board, "timings": timings, "gate": gate, "completeness": completeness}


def render(text: str) -> str:
    """``text`` with every generated section rewritten."""

    def replace(match):
        name = match.group(2)
        if name not in SECTIONS:
            raise KeyError(f"unknown generated section {name!r}; valid: {', '.join(SECTIONS)}")
        return match.group(1) + SECTIONS[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date; write nothing")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
