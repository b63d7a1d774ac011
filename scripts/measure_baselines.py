"""Ranking stability across baselines (blur, mean, zero, road) on a suite (default relations), into
benchmarks/results/baselines_SUITE.json (read by scripts/update_readme.py).

    python scripts/measure_baselines.py [--suite relations] [--units-per-layer 8] [--work DIR]

Runs the suite once per baseline (the first N units of each layer, every built-in method) with
`cafe_bench.sensitivity.run_baselines`, resuming runs already in --work, then Kendall's tau between the method
rankings of every pair of baselines per protocol and layer-pooled.
"""

import argparse
import time
from pathlib import Path

import torch

from cafe_bench.files import write_json_atomic
from cafe_bench.provenance import collect
from cafe_bench.results import read_run
from cafe_bench.sensitivity import ALL_BASELINES, baseline_agreement, method_means, run_baselines
from cafe_bench.suites import DEFAULT_SUITE, load_suite

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=DEFAULT_SUITE, help=f"suite (default: {DEFAULT_SUITE})")
    parser.add_argument("--units-per-layer", type=int, default=8, help="units per layer (default: 8)")
    parser.add_argument(
        "--work", type=Path, default=Path("baseline-runs"), help="run directories (default: ./baseline-runs)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    started = time.perf_counter()
    dirs = run_baselines(suite, args.work, ALL_BASELINES, units_per_layer=args.units_per_layer)
    wall = {d.name: read_run(d)[1]["wall_time_s"] for d in dirs}
    means = {d.name: method_means(read_run(d)[0]).round(6).to_dict() for d in dirs}
    doc = {
        "what": "Kendall tau-b between the method rankings (mean AUC over the units) of runs that differ only in the "
        "baseline (cafe_bench.sensitivity.baseline_agreement)",
        "suite": suite.name,
        "suite_version": suite.version,
        "units_per_layer": args.units_per_layer,
        "agreement": baseline_agreement(dirs).to_dict("records"),
        "method_means": means,
        "run_wall_s": wall,
        "wall_s": round(time.perf_counter() - started, 1),
        "provenance": collect("cpu"),
    }
    out = RESULTS / f"baselines_{suite.name}.json"
    write_json_atomic(out, doc)
    print(f"wrote {out} in {doc['wall_s']} s")


if __name__ == "__main__":
    main()
