"""Measure what the regression gate detects on a real run: for every method x layer x protocol of the committed
`tiny` run, the smallest uniform worsening of every unit's curve that `compare` flags, under the paired rule
(default) and the between-feature ci rule; and the smallest worsening of a single unit that the paired and the
unit rule flag.

A worsening by delta moves every curve point of the row's units by delta against the protocol's direction (so
every AUC moves by delta); the smallest detected delta is found by bisection on the real gate
(``cafe_bench.compare.gate``), to 1e-6.

    python scripts/measure_gate.py                      # writes benchmarks/results/gate_thresholds.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
from pathlib import Path

import pandas as pd

from cafe_bench.compare import DEFAULT_TOLERANCE, gate, load_board
from cafe_bench.results import read_run

ROOT = Path(__file__).resolve().parents[1]


def worsened(rows: pd.DataFrame, delta: float, layer: int, protocol: str, one: bool = False) -> pd.DataFrame:
    """``rows`` with every ok curve of ``layer`` x ``protocol`` (with ``one``: only the first) moved by ``delta``
    against the protocol's direction (its AUC moves by delta)."""
    out = rows.copy()
    ok = (out["status"] == "ok") & (out["layer"] == layer) & (out["protocol"] == protocol)
    if one:
        ok &= out.index == ok[ok].index[0]
    sign = out.loc[ok, "higher_is_better"].map(lambda h: -1.0 if h else 1.0)
    out.loc[ok, "auc"] = out.loc[ok, "auc"] + sign * delta
    return out


def smallest_detected(rows, config, board, method, layer, protocol, rule, one=False, hi=1.0, tol=1e-6):
    """The smallest delta in (0, hi] for which ``rule`` flags ``method``'s records (``rows``) worsened on
    ``layer`` x ``protocol`` (every unit, or with ``one`` a single unit), or None."""

    def flagged(delta):
        changed = worsened(rows, delta, layer, protocol, one)
        result = gate(changed, config, board, rule=rule, methods=[method])
        return any(f.kind == "regression" for f in result.findings)

    if flagged(0.0):
        raise RuntimeError(f"{method}: the unchanged run is already flagged by rule {rule}")
    if not flagged(hi):
        return None
    lo = 0.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if flagged(mid) else (mid, hi)
    return hi


def summary(values) -> dict:
    found = [v for v in values if v is not None]
    return {
        "median": statistics.median(found) if found else None,
        "min": min(found) if found else None,
        "max": max(found) if found else None,
        "n_rows": len(values),
        "n_missed_up_to_1": sum(v is None for v in values),
        "n_missed_0.2": sum(v is None or v > 0.2 for v in values),
        "n_missed_0.05": sum(v is None or v > 0.05 for v in values),
        "n_missed_0.02": sum(v is None or v > 0.02 for v in values),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=ROOT / "leaderboards" / "tiny", type=Path, help="a run directory")
    parser.add_argument("--board", default=ROOT / "leaderboards" / "tiny.json", type=Path, help="its board JSON")
    parser.add_argument("--out", default=ROOT / "benchmarks" / "results" / "gate_thresholds.json", type=Path)
    args = parser.parse_args(argv)
    records, doc = read_run(args.run)
    board = load_board(args.board)
    rows = []
    for method, layer, protocol in records[["method", "layer", "protocol"]].drop_duplicates().itertuples(index=False):
        mine = records[records.method == method]
        found = {
            rule: smallest_detected(mine, doc["config"], board, method, int(layer), protocol, rule)
            for rule in ("paired", "ci")
        }
        for rule in ("paired", "unit"):
            found[f"{rule}_one_unit"] = smallest_detected(
                mine, doc["config"], board, method, int(layer), protocol, rule, one=True
            )
        rows.append({"method": method, "layer": int(layer), "protocol": protocol, **found})
        print(f"{method:<22} L{layer} {protocol:<10} " + "  ".join(f"{k} {v}" for k, v in found.items()), flush=True)
    result = {
        "what": "smallest uniform AUC worsening of one method x layer x protocol that `compare` flags",
        "run": str(args.run.relative_to(ROOT) if args.run.is_relative_to(ROOT) else args.run),
        "tolerance": DEFAULT_TOLERANCE,
        "ci_floor": 0.02,
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "machine": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "paired": summary([r["paired"] for r in rows]),
        "ci": summary([r["ci"] for r in rows]),
        "paired_one_unit": summary([r["paired_one_unit"] for r in rows]),
        "unit_one_unit": summary([r["unit_one_unit"] for r in rows]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
