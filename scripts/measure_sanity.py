"""Model-randomisation sanity check of every built-in method on a suite (default tiny), into
benchmarks/results/sanity_SUITE.json (read by scripts/update_readme.py).

    python scripts/measure_sanity.py [--suite tiny] [--units 8]
"""

import argparse
import time
from pathlib import Path

import torch

from cafe_bench.files import write_json_atomic
from cafe_bench.provenance import collect
from cafe_bench.runner import DEFAULT_METHODS
from cafe_bench.sanity import DEFAULT_THRESHOLD, cascading_randomisation, flags, to_frame
from cafe_bench.suites import load_suite

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="tiny", help="suite (default: tiny)")
    parser.add_argument("--units", type=int, default=8, help="units per layer (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    started = time.perf_counter()
    rows = cascading_randomisation(suite, list(DEFAULT_METHODS), n_units=args.units, seed=0)
    doc = {
        "what": "cascading model randomisation: median Spearman rho of each method's patch scores on the randomised "
        "model with its scores on the trained model (cafe_bench.sanity)",
        "suite": suite.name,
        "suite_version": suite.version,
        "n_units": args.units,
        "seed": 0,
        "threshold": DEFAULT_THRESHOLD,
        "rows": to_frame(rows).to_dict("records"),
        "flags": {str(k): v for k, v in flags(rows).items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "provenance": collect("cpu"),
    }
    write_json_atomic(RESULTS / f"sanity_{suite.name}.json", doc)
    print(f"wrote {RESULTS / f'sanity_{suite.name}.json'} in {doc['wall_s']} s")


if __name__ == "__main__":
    main()
