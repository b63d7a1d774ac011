"""Cost per unit of every built-in attributor, on the default suite and on ViT-B-32, into
benchmarks/results/method_costs.json (read by scripts/update_readme.py).

    python scripts/measure_method_costs.py [--units 8]

Per method: the wall time of its attribution of a batch of units (no curves), per unit, and as a multiple of one
batched forward pass of the same units to the SAE's block timed in the same process (the reference, so the
figures compare across machines better than seconds do). Best of two rounds after a warm-up. Settings: the
first ``--units`` units of the deepest layer of ``relations``; open_clip ViT-B-32 with random weights, a random
SAE at block 6, 224 px random images, each unit its image's strongest feature and token.
"""

import argparse
import time
from pathlib import Path

import torch

from cafe_bench.attributors.registry import get_attributor
from cafe_bench.files import write_json_atomic
from cafe_bench.provenance import collect
from cafe_bench.runner import DEFAULT_METHODS
from cafe_bench.suites import load_suite
from cafe_bench.synthetic import random_vit_target

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _best(fn, rounds: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def costs(target) -> dict:
    """{method: {seconds_per_unit, forward_passes}} and the reference forward pass of the batch."""

    def forward():
        with torch.no_grad():
            target.forward(target.images)

    reference = _best(forward)
    out = {}
    for name in DEFAULT_METHODS:
        method = get_attributor(name)
        seconds = _best(lambda m=method: m.scores(target), rounds=1 if name == "kernel_shap" else 2)
        out[name] = {"seconds_per_unit": seconds / len(target), "forward_passes": seconds / reference}
    return {"forward_pass_seconds_per_unit": reference / len(target), "methods": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=8, help="units per setting (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    suite = load_suite("relations")
    deepest = max(suite.layers)
    relations = suite.target(suite.units([deepest])[: args.units])
    doc = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "relations": {"layer": deepest, "n_units": len(relations), **costs(relations)},
        "vit_b_32": {
            "layer": 6,
            "n_units": args.units,
            **costs(random_vit_target("open_clip:ViT-B-32", 6, args.units)),
        },
        "wall_s": 0.0,
        "provenance": collect("cpu"),
    }
    doc["wall_s"] = round(time.perf_counter() - started, 1)
    write_json_atomic(RESULTS / "method_costs.json", doc)
    print(f"wrote {RESULTS / 'method_costs.json'} in {doc['wall_s']} s")


if __name__ == "__main__":
    main()
