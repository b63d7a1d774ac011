"""Leaderboards from result records: mean AUC with a clustered bootstrap CI per method x layer x protocol, the
best per column marked, methods whose CI overlaps the best's marked as tied, rendered as markdown, CSV,
LaTeX (booktabs) or HTML; and boards saved as JSON (with every unit's AUC) for the regression gate."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from cafe_bench.protocols.registry import higher_is_better, list_protocols
from cafe_bench.results import unit_set
from cafe_bench.schema import BOARD_ROW_FIELDS, SCHEMA_VERSION, UNIT_FIELDS, status_kind
from cafe_bench.stats import clustered_bootstrap_ci

SUMMARY_COLUMNS = list(BOARD_ROW_FIELDS)
FORMATS = ("md", "csv", "latex", "html")


def legend(protocols) -> str:
    """The legend under a table with ``protocols``: marks, the unranked rule and each protocol's direction."""
    protocols = list(dict.fromkeys(protocols))
    higher = [p for p in protocols if higher_is_better(p)]
    lower = [p for p in protocols if not higher_is_better(p)]
    direction = "; ".join(
        f"{', '.join(names)} {word} is better" for names, word in ((higher, "higher"), (lower, "lower")) if names
    )
    return (
        "bold: best in its column; †: 95% CI overlaps the best's (tied); methods are ranked on the units every "
        "ranked method finished; a method that failed on any unit is shown with its failure count, unranked; "
        + direction
    )


def _direction(group: pd.DataFrame, protocol: str) -> bool:
    """A protocol's direction: from the records when they carry it, else from the registry."""
    if "higher_is_better" in group and group["higher_is_better"].notna().any():
        return bool(group["higher_is_better"].dropna().iloc[0])
    return higher_is_better(protocol)


def summarize(
    records: pd.DataFrame, n_resamples: int = 1000, level: float = 0.95, seed: int = 0, ci_method: str = "percentile"
) -> pd.DataFrame:
    """One row per method x layer x protocol (columns: :class:`cafe_bench.schema.BoardRow`).

    Like is compared with like: in each layer x protocol, the methods without failures are *ranked* and their
    mean AUC and CI are taken over the units that every ranked method finished (status ``ok``); a method that
    failed on any unit is shown with ``n_failed`` and its mean over its own ok units, but is never best or tied.
    ``n_dead`` counts units whose feature is dead on the clean image. The CI resamples features, then images
    within them (``ci_method`` percentile or bca, ``n_resamples`` replicates, seeded by ``seed``).
    """
    rows = []
    for (layer, protocol), lp in records.groupby(["layer", "protocol"], sort=True):
        kinds = lp["status"].map(status_kind)
        ok_rows, counts = {}, {}
        for method, group in lp.groupby("method", sort=True):
            k = kinds.loc[group.index]
            ok_rows[method] = group[k == "ok"]
            counts[method] = (int((k == "failed").sum()), int((k == "dead").sum()))
        ranked = [m for m in ok_rows if counts[m][0] == 0]
        common = set.intersection(*(unit_set(ok_rows[m]) for m in ranked)) if ranked else set()
        for method, ok in ok_rows.items():
            if method in ranked:
                keys = ok[list(UNIT_FIELDS)].itertuples(index=False, name=None)
                ok = ok.loc[np.array([key in common for key in keys], dtype=bool)]
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
                    "higher_is_better": _direction(lp, protocol),
                    "n_units": len(ok),
                    "n_failed": counts[method][0],
                    "n_dead": counts[method][1],
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "ranked": method in ranked,
                }
            )
    return mark_best(pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("best", "tied")]))


def mark_best(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``best`` (the best mean of its layer x protocol among ranked rows, by the row's direction) and
    ``tied`` (a ranked row whose CI overlaps the best's CI)."""
    out = summary.copy()
    out["best"] = False
    out["tied"] = False
    for _, group in out.groupby(["layer", "protocol"]):
        group = group[(group["n_units"] > 0) & group["ranked"].astype(bool)]
        if group.empty:
            continue
        sign = np.where(group["higher_is_better"].astype(bool), 1.0, -1.0)
        best = (sign * group["mean"]).idxmax()
        out.loc[best, "best"] = True
        lo, hi = out.loc[best, "ci_low"], out.loc[best, "ci_high"]
        overlap = (group["ci_low"] <= hi) & (group["ci_high"] >= lo) & (group.index != best)
        out.loc[group.index[overlap], "tied"] = True
    return out


def _cell(row, fmt: str) -> str:
    failed = f" ({row['n_failed']} failed, unranked)" if not row["ranked"] else ""
    if row["n_units"] == 0:
        return "n/a" + failed
    text = f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    if failed:
        return text + failed
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
    protocols = _protocol_order(summary)
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


def _protocol_order(summary: pd.DataFrame) -> list[str]:
    present = set(summary["protocol"])
    return [p for p in list_protocols() if p in present] + sorted(present - set(list_protocols()))


def render(summary: pd.DataFrame, fmt: str = "md", by: str = "method") -> str:
    """The leaderboard as text: ``md`` (GitHub markdown), ``csv`` (one row per method x layer x protocol),
    ``latex`` (booktabs) or ``html`` (one self-contained page)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary.to_csv(index=False, float_format="%.6g")
    shown = table(summary, by=by, fmt=fmt)
    note = legend(_protocol_order(summary))
    if fmt == "md":
        return shown.to_markdown(index=False) + f"\n\n{note}\n"
    if fmt == "latex":
        shown = shown.copy()
        shown.columns = [str(c).replace("_", r"\_") for c in shown.columns]
        for col in shown.columns:
            shown[col] = shown[col].map(lambda v: v.replace("_", r"\_") if isinstance(v, str) else v)
        latex = shown.style.hide(axis="index").to_latex(hrules=True, column_format="l" * len(shown.columns))
        return latex + f"% {note}\n"
    body = shown.to_html(index=False, escape=False, border=0)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>cafe_bench leaderboard</title>'
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ccc;text-align:left}</style></head><body>\n"
        f"{body}\n<p>{html.escape(note)}</p>\n</body></html>\n"
    )


def render_markdown(summary: pd.DataFrame) -> str:
    """The run's closing table: a row per layer x method, insertion and deletion columns."""
    return render(summary, "md", by="layer")


def _json_scalar(value):
    """numpy scalars as Python numbers (full precision)."""
    return value.item() if hasattr(value, "item") else str(value)


BOARD_UNIT_FIELDS = (*UNIT_FIELDS, "method", "protocol", "status", "auc")
"""What a board keeps of every record: enough for the paired, per-unit regression gate."""


def board(summary: pd.DataFrame, run_doc: dict, statistics: dict, records: pd.DataFrame) -> dict:
    """A leaderboard document (JSON-ready): the rows, every record's unit, status and AUC, the statistics
    settings, and the run's config and provenance, so that ``compare RUN --board FILE`` needs nothing else."""
    rows = json.loads(summary[SUMMARY_COLUMNS].replace({np.nan: None}).to_json(orient="records"))
    units = records[list(BOARD_UNIT_FIELDS)].sort_values(list(BOARD_UNIT_FIELDS[:6]), kind="stable")
    units = [[None if isinstance(v, float) and v != v else v for v in row] for row in units.to_dict("split")["data"]]
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": run_doc["config"]["suite"],
        "suite_version": run_doc["config"]["suite_version"],
        "config": run_doc["config"],
        "provenance": run_doc.get("provenance", {}),
        "statistics": statistics,
        "rows": rows,
        "units": json.loads(json.dumps(units, default=_json_scalar)),
        "unit_fields": list(BOARD_UNIT_FIELDS),
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
    unit = list(UNIT_FIELDS)
    rows = []
    for (layer, protocol), group in ok.groupby(["layer", "protocol"], sort=True):
        ref = group[group["method"] == reference].set_index(unit)["auc"]
        sign = 1.0 if _direction(group, protocol) else -1.0
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
