"""Leaderboard tables from result records: mean AUC with a clustered bootstrap CI per method x layer."""

from __future__ import annotations

import pandas as pd

from cafe_bench.stats import clustered_bootstrap_ci

SUMMARY_COLUMNS = ["method", "layer", "protocol", "n_units", "n_skipped", "mean", "ci_low", "ci_high"]


def summarize(records: pd.DataFrame, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per method x layer x protocol: units with status ``ok``, mean AUC and its CI.

    The CI resamples features, then images within them (percentile, ``n_resamples`` replicates, seeded).
    """
    rows = []
    for (method, layer, protocol), group in records.groupby(["method", "layer", "protocol"], sort=True):
        ok = group[group["status"] == "ok"]
        mean, low, high = clustered_bootstrap_ci(
            ok["auc"].to_numpy(dtype=float), ok["feature"].to_numpy(), n_resamples=n_resamples, level=level, seed=seed
        )
        rows.append(
            {
                "method": method,
                "layer": int(layer),
                "protocol": protocol,
                "n_units": len(ok),
                "n_skipped": len(group) - len(ok),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _cell(row) -> str:
    if row["n_units"] == 0:
        return "n/a"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per method x layer, a column per protocol ("mean [low, high]") and n."""
    wide = summary.assign(cell=summary.apply(_cell, axis=1)).pivot_table(
        index=["method", "layer"], columns="protocol", values="cell", aggfunc="first"
    )
    order = [p for p in ("insertion", "deletion") if p in wide.columns] + [
        p for p in wide.columns if p not in ("insertion", "deletion")
    ]
    wide = wide[order]
    wide.columns = [f"{p} AUC (95% CI)" for p in wide.columns]
    n = summary.groupby(["method", "layer"])["n_units"].max().rename("n")
    out = wide.join(n).reset_index()
    return out.sort_values(["layer", "method"], kind="stable").reset_index(drop=True)


def render_markdown(summary: pd.DataFrame) -> str:
    """The wide table as GitHub markdown."""
    return table(summary).to_markdown(index=False)
