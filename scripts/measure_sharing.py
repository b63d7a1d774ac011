"""When sharing an image's forward pass between k features pays: gradient and integrated gradients, shared vs one
row per unit (``shared=False``), for k features on one image plus the other units of a batch, on the default suite's
small model and on ViT-B-32 (random weights, block 6, 224 px), with what ``worth_sharing`` decides at the default
budget; each timed as the code decides, with sharing forced and as rows. Best of ``--rounds`` after a warm-up.
Writes ``benchmarks/results/sharing.json`` (read by the README).

    python scripts/measure_sharing.py [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from cafe_bench.attributors import captum_methods, gradient
from cafe_bench.files import write_json_atomic
from cafe_bench.provenance import collect
from cafe_bench.synthetic import strongest_features
from cafe_bench.target import Target

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
IG_STEPS = 16


def _best(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _attribute(method: str, target, shared: bool, force: bool = False):
    """The method's pixel map; ``force``: every group of units on one image shares, whatever ``worth_sharing`` says."""
    if force:
        keep = gradient.worth_sharing, captum_methods.worth_sharing
        gradient.worth_sharing = captum_methods.worth_sharing = lambda target, alone, groups, s: (alone, groups)
    try:
        if method == "gradient":
            return gradient.input_gradient(target, shared)
        return captum_methods.integrated_gradients(target, IG_STEPS, shared=shared)
    finally:
        if force:
            gradient.worth_sharing, captum_methods.worth_sharing = keep


def _with_k_features(target, k: int):
    """The target's first image with its k strongest features at the first unit's token, then the other units."""
    first = target.units[0].image_id
    others = [i for i, u in enumerate(target.units) if u.image_id != first]
    units = strongest_features(target, 0, k) + [target.units[i] for i in others]
    rows = [0] * k + others
    return Target(target.backbone, target.saes, units, target.images[rows], target.baseline[rows], [0] * len(rows))


def measure(name: str, target, ks: dict, rounds: int) -> list[dict]:
    out = []
    for method, kvalues in ks.items():
        for k in kvalues:
            t = _with_k_features(target, k)
            run = partial(_attribute, method, t)
            distinct = len(t) - k + 1
            s = 1 if method == "gradient" else max(1, min(64 // distinct, IG_STEPS))  # steps per pass, batch_size 64
            entry = {"model": name, "method": method, "k": k, "n_units": len(t), "steps_per_pass": s}
            entry["images_per_pass"] = gradient.images_per_pass(t)
            entry["rule_shares"] = k * s > entry["images_per_pass"]
            entry["default_s"] = round(_best(partial(run, True), rounds), 4)  # as the code decides
            entry["forced_shared_s"] = round(_best(partial(run, True, True), rounds), 4)
            entry["rows_s"] = round(_best(partial(run, False), rounds), 4)
            print(entry, flush=True)
            out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after a warm-up (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sharing.json", help="result JSON")
    args = parser.parse_args()
    from cafe_bench.suites import DEFAULT_SUITE, load_suite
    from cafe_bench.synthetic import random_vit_target

    suite = load_suite(DEFAULT_SUITE)
    small = suite.target(suite.units([5])[:16])
    vitb = random_vit_target("open_clip:ViT-B-32", 6, 4)
    cases = measure(DEFAULT_SUITE, small, {"gradient": [2, 8, 32], "integrated_gradients": [2, 8, 32]}, args.rounds)
    cases += measure("ViT-B-32", vitb, {"gradient": [2, 8, 16], "integrated_gradients": [2, 8]}, args.rounds)
    doc = {"ig_steps": IG_STEPS, "rounds": args.rounds, "cases": cases, "provenance": collect("cpu")}
    write_json_atomic(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
