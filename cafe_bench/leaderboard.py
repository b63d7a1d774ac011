"""Leaderboards from result records: mean AUC with a clustered bootstrap CI per method x layer x protocol, the
best per column marked, methods whose CI overlaps the best's marked as tied, rendered as markdown, CSV,
LaTeX (booktabs) or HTML; and boards saved as JSON for regression comparison."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from cafe_bench.stats import clustered_bootstrap_ci

SUMMARY_COLUMNS = ["method", "layer", "protocol", "n_units", "n_skipped", "mean", "ci_low", "ci_high"]
HIGHER_IS_BETTER = {"insertion": True, "deletion": False}
"""Direction of each protocol's AUC."""
FORMATS = ("md", "csv", "latex", "html")
LEGEND = "bold: best in its column; †: 95% CI overlaps the best's (tied); insertion higher is better, deletion lower"


def summarize(
    records: pd.DataFrame, n_resamples: int = 1000, level: float = 0.95, seed: int = 0, ci_method: str = "percentile"
) -> pd.DataFrame:
    """One row per method x layer x protocol: units with status ``ok``, mean AUC and its CI.

    The CI resamples features, then images within them (``ci_method`` percentile or bca, ``n_resamples``
    replicates, seeded by ``seed``). Columns: SUMMARY_COLUMNS plus ``best`` and ``tied``.
    """
    rows = []
    for (method, layer, protocol), group in records.groupby(["method", "layer", "protocol"], sort=True):
        ok = group[group["status"] == "ok"]
        mean, low, high = clustered_bootstrap_ci(
            ok["auc"].to_numpy(dtype=float),
            ok["feature"].to_numpy(),
            n_resamples=n_resamples,
            level=level,
            seed=seed,
            method=ci_method,
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
    return mark_best(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))


def mark_best(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``best`` (the best mean of its layer x protocol) and ``tied`` (CI overlaps the best's CI)."""
    out = summary.copy()
    out["best"] = False
    out["tied"] = False
    for (_, protocol), group in out.groupby(["layer", "protocol"]):
        group = group[group["n_units"] > 0]
        if group.empty:
            continue
        sign = 1 if HIGHER_IS_BETTER.get(protocol, True) else -1
        best = (sign * group["mean"]).idxmax()
        out.loc[best, "best"] = True
        lo, hi = out.loc[best, "ci_low"], out.loc[best, "ci_high"]
        overlap = (group["ci_low"] <= hi) & (group["ci_high"] >= lo) & (group.index != best)
        out.loc[group.index[overlap], "tied"] = True
    return out


def _cell(row, fmt: str) -> str:
    if row["n_units"] == 0:
        return "n/a"
    text = f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    if row["best"]:
        return {"md": f"**{text}**", "latex": f"\\textbf{{{text}}}", "html": f"<b>{text}</b>"}.get(fmt, text)
    if row["tied"]:
        return f"{text} $^\\dagger$" if fmt == "latex" else f"{text} †"
    return text


def table(summary: pd.DataFrame, by: str = "method", fmt: str = "md") -> pd.DataFrame:
    """Display table of cells "mean [low, high]". ``by="method"``: a row per method, a column per layer x
    protocol; ``by="layer"``: a row per layer x method, a column per protocol."""
    if by not in ("method", "layer"):
        raise ValueError(f"unknown table layout {by!r}; valid: method, layer")
    protocols = [p for p in ("insertion", "deletion") if p in set(summary["protocol"])]
    protocols += sorted(set(summary["protocol"]) - set(protocols))
    cells = summary.assign(cell=summary.apply(_cell, axis=1, fmt=fmt))
    if by == "layer":
        wide = cells.pivot_table(index=["layer", "method"], columns="protocol", values="cell", aggfunc="first")
        wide = wide[protocols]
        wide.columns = [f"{p} AUC (95% CI)" for p in protocols]
        n = cells.groupby(["layer", "method"])["n_units"].max().rename("n")
        return wide.join(n).reset_index()
    wide = cells.pivot_table(index="method", columns=["layer", "protocol"], values="cell", aggfunc="first")
    order = [(layer, p) for layer in sorted(set(summary["layer"])) for p in protocols]
    wide = wide[[c for c in order if c in wide.columns]]
    wide.columns = [f"L{layer} {p}" for layer, p in wide.columns]
    return wide.reset_index()


def render(summary: pd.DataFrame, fmt: str = "md", by: str = "method") -> str:
    """The leaderboard as text: ``md`` (GitHub markdown), ``csv`` (one row per method x layer x protocol),
    ``latex`` (booktabs) or ``html`` (one self-contained page)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary.to_csv(index=False, float_format="%.6g")
    shown = table(summary, by=by, fmt=fmt)
    if fmt == "md":
        return shown.to_markdown(index=False) + f"\n\n{LEGEND}\n"
    if fmt == "latex":
        shown = shown.copy()
        shown.columns = [str(c).replace("_", r"\_") for c in shown.columns]
        for col in shown.columns:
            shown[col] = shown[col].map(lambda v: v.replace("_", r"\_") if isinstance(v, str) else v)
        latex = shown.style.hide(axis="index").to_latex(hrules=True, column_format="l" * len(shown.columns))
        return latex + f"% {LEGEND}\n"
    body = shown.to_html(index=False, escape=False, border=0)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>cafe_bench leaderboard</title>'
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ccc;text-align:left}</style></head><body>\n"
        f"{body}\n<p>{html.escape(LEGEND)}</p>\n</body></html>\n"
    )


def render_markdown(summary: pd.DataFrame) -> str:
    """The run's closing table: a row per layer x method, insertion and deletion columns."""
    return render(summary, "md", by="layer")


def board(summary: pd.DataFrame, run_doc: dict, statistics: dict) -> dict:
    """A leaderboard document (JSON-ready): the rows, the statistics settings, and the run's config and
    provenance, so ``compare`` can check that a new run is comparable."""
    rows = json.loads(summary.replace({np.nan: None}).to_json(orient="records"))
    return {
        "schema_version": 1,
        "suite": run_doc["config"]["suite"],
        "config": run_doc["config"],
        "provenance": run_doc.get("provenance", {}),
        "statistics": statistics,
        "rows": rows,
    }


PAIRED_COLUMNS = [
    "method",
    "reference",
    "layer",
    "protocol",
    "n_units",
    "better_by",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "prob_improvement",
]


def paired_comparisons(
    records: pd.DataFrame,
    reference: str = "activation",
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ci_method: str = "percentile",
) -> pd.DataFrame:
    """Every method against ``reference`` (default ``activation``, the paper's baseline) on identical units.

    Per layer x protocol: ``better_by`` = mean paired AUC difference oriented so that positive means better
    than the reference (insertion: method - reference; deletion: reference - method), its clustered bootstrap
    CI, a two-sided p-value, the Holm-adjusted p-value over the whole family of comparisons in the table, and
    the probability of improvement (share of units where the method is better, ties half).
    """
    from cafe_bench.stats import holm, paired_difference

    if reference not in set(records["method"]):
        raise ValueError(
            f"reference method {reference!r} is not in the results; valid: {', '.join(sorted(set(records['method'])))}"
        )
    ok = records[records["status"] == "ok"]
    unit = ["layer", "feature", "image_id", "token"]
    rows = []
    for (layer, protocol), group in ok.groupby(["layer", "protocol"], sort=True):
        ref = group[group["method"] == reference].set_index(unit)["auc"]
        sign = 1.0 if HIGHER_IS_BETTER.get(protocol, True) else -1.0
        for method in sorted(set(group["method"]) - {reference}):
            mine = group[group["method"] == method].set_index(unit)["auc"]
            both = pd.concat([mine, ref], axis=1, keys=["m", "r"], join="inner")
            if len(both) < 2:
                continue
            res = paired_difference(
                sign * both["m"].to_numpy(float),
                sign * both["r"].to_numpy(float),
                both.index.get_level_values("feature").to_numpy(),
                n_resamples=n_resamples,
                level=level,
                seed=seed,
                method=ci_method,
            )
            rows.append(
                {
                    "method": method,
                    "reference": reference,
                    "layer": int(layer),
                    "protocol": protocol,
                    "n_units": res["n_units"],
                    "better_by": res["mean_diff"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "p_value": res["p_value"],
                    "prob_improvement": res["prob_improvement"],
                }
            )
    out = pd.DataFrame(rows, columns=[c for c in PAIRED_COLUMNS if c != "p_holm"])
    out.insert(len(out.columns) - 1, "p_holm", holm(out["p_value"].to_numpy()) if len(out) else [])
    return out
