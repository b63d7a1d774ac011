"""Baseline sensitivity: do method rankings agree when the removed patches become blur, mean colour, black or
ROAD's noisy linear imputation (``road``)?"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

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


ALL_BASELINES = ("blur", "mean", "zero", "road")
"""What ``cafe-bench baselines --suite`` compares by default."""


def run_baselines(
    suite,
    out_dir,
    baselines=ALL_BASELINES,
    methods=None,
    layers=None,
    units_per_layer: int | None = None,
    progress=True,
) -> list[Path]:
    """Run ``suite`` once per baseline into ``out_dir/BASELINE`` (resuming what is there) and return the run
    directories, for :func:`baseline_agreement`.

    Args:
        suite: a loaded suite or a built-in name.
        baselines: registered baselines (default blur, mean, zero, road).
        methods, layers: as for :func:`cafe_bench.run` (default: every built-in method, every layer).
        units_per_layer: the first N units of each layer (default: all).
    """
    from cafe_bench.protocols.baselines import check_baseline
    from cafe_bench.runner import run
    from cafe_bench.suites import Suite, load_suite

    for name in baselines:
        check_baseline(name)
    if len(set(baselines)) < 2:
        raise ResultsError("baseline sensitivity needs at least two different baselines")
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    layers = suite.layers if layers is None else [int(layer) for layer in layers]
    units = None
    if units_per_layer is not None:
        units = [u for layer in layers for u in suite.units([layer])[:units_per_layer]]
    dirs = []
    for name in baselines:
        out = Path(out_dir) / name
        resume = (out / "run.json").is_file()
        run(
            suite, methods=methods, layers=layers, baseline=name, out=out, resume=resume, units=units, progress=progress
        )
        dirs.append(out)
    return dirs
