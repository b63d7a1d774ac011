"""Baseline sensitivity: do method rankings agree when the removed patches become blur, mean colour or black?"""

from __future__ import annotations

from itertools import combinations

import pandas as pd
from scipy.stats import kendalltau

from cafe_bench.results import ResultsError, read_run
from cafe_bench.schema import IDENTITY_FIELDS

AGREEMENT_COLUMNS = ["protocol", "baseline_a", "baseline_b", "n_methods", "kendall_tau", "p_value"]


def method_means(records: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC over all ok units, a row per method, a column per protocol."""
    ok = records[records["status"] == "ok"]
    return ok.groupby(["method", "protocol"])["auc"].mean().unstack("protocol")


def baseline_agreement(run_dirs) -> pd.DataFrame:
    """Kendall tau between the method rankings of every pair of runs, one run per baseline, per protocol.

    The runs must share suite, files, steps, curve rules and layers, and differ in ``baseline``; methods present
    in both runs of a pair are ranked by mean AUC over all their units (scipy.stats.kendalltau, tau-b).
    """
    runs, first = {}, None
    keys = [k for k in IDENTITY_FIELDS if k != "baseline"] + ["layers", "seed"]
    for run_dir in run_dirs:
        records, doc = read_run(run_dir)
        first = first or (run_dir, doc["config"])
        for key in keys:
            if doc["config"].get(key) != first[1].get(key):
                raise ResultsError(f"{run_dir}: {key} differs from {first[0]}; the runs must differ in baseline only")
        baseline = doc["config"]["baseline"]
        if baseline in runs:
            raise ResultsError(f"{run_dir}: a second run with baseline {baseline!r}; give one run per baseline")
        runs[baseline] = method_means(records)
    if len(runs) < 2:
        raise ResultsError("baseline sensitivity needs runs with at least two different baselines")
    rows = []
    for a, b in combinations(sorted(runs), 2):
        for protocol in sorted(set(runs[a].columns) & set(runs[b].columns)):
            both = pd.concat([runs[a][protocol], runs[b][protocol]], axis=1, keys=["a", "b"]).dropna()
            tau, p = kendalltau(both["a"], both["b"]) if len(both) >= 2 else (float("nan"), float("nan"))
            rows.append(
                {
                    "protocol": protocol,
                    "baseline_a": a,
                    "baseline_b": b,
                    "n_methods": len(both),
                    "kendall_tau": float(tau),
                    "p_value": float(p),
                }
            )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
