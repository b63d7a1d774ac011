"""How far reduced-precision curves move the AUCs: the default run at fp32, bf16 and fp16 (autocast of the curves'
forward passes), per-unit |AUC - AUC(fp32)|, the mean AUC per method, layer and protocol, and whether the methods'
order changes. Writes ``benchmarks/results/precision_relations.json`` (the README's precision section and
``cafe_bench.protocols.engine.PRECISION_TOLERANCE`` rest on it).

    python scripts/measure_precision.py [--out FILE] [--suite NAME]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

import cafe_bench
from cafe_bench.protocols.engine import PRECISIONS

KEY = ["layer", "feature", "image_id", "token", "method", "protocol"]


def measure(suite: str) -> dict:
    frames, walls = {}, {}
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        frames[precision] = cafe_bench.run(suite, precision=precision, progress=False).set_index(KEY).sort_index()
        walls[precision] = round(time.perf_counter() - t0, 1)
        print(f"{precision}: {walls[precision]} s", flush=True)
    ref = frames["fp32"]
    out = {}
    for precision in PRECISIONS:
        if precision == "fp32":
            continue
        diff = (frames[precision]["auc"] - ref["auc"]).abs().dropna()
        means = frames[precision].groupby(["layer", "protocol", "method"])["auc"].mean()
        ref_means = ref.groupby(["layer", "protocol", "method"])["auc"].mean()
        taus = {}
        for (layer, protocol), group in ref_means.groupby(level=["layer", "protocol"]):
            other = means.loc[group.index]
            taus[f"{layer}/{protocol}"] = round(float(kendalltau(group.values, other.values).statistic), 4)
        out[precision] = {
            "wall_s": walls[precision],
            "unit_abs_auc_diff": {
                "max": float(diff.max()),
                "p99": float(np.quantile(diff, 0.99)),
                "median": float(diff.median()),
                "n": int(len(diff)),
            },
            "unit_abs_auc_diff_max_by_protocol": {p: float(g.max()) for p, g in diff.groupby(level="protocol")},
            "mean_auc_abs_diff_max": float((means - ref_means).abs().max()),
            "method_order_kendall_tau": taus,
        }
    return {
        "suite": suite,
        "fp32_wall_s": walls["fp32"],
        "precisions": out,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads()},
        "torch": torch.__version__,
        "device": "cpu",
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="relations", help="suite (default: relations)")
    parser.add_argument("--out", default="benchmarks/results/precision_relations.json", help="where the JSON goes")
    args = parser.parse_args()
    doc = measure(args.suite)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["precisions"], indent=1))


if __name__ == "__main__":
    main()
