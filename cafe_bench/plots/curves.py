"""Curves with clustered bootstrap bands and mean AUC by layer, from stored records."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cafe_bench.errors import CafeBenchError
from cafe_bench.leaderboard import summarize
from cafe_bench.plots.style import (
    _STYLE,
    CURVE_SUMMARY_COLUMNS,
    LEVEL,
    _ci_name,
    _linestyle,
    _new_figure,
    better_text,
    method_colour,
    protocol_word,
    save_figure,
)
from cafe_bench.protocols.registry import higher_is_better, list_protocols
from cafe_bench.stats import clustered_bootstrap_ci
from cafe_bench.store import RESULTS


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """The records of ``run_dir`` (one per unit x method x protocol, the last stored when a failure was retried).

    Raises CafeBenchError naming the file if ``results.jsonl`` or ``run.json`` is missing, damaged or empty, or
    if no record has status ``ok``.
    """
    return _read_run(Path(run_dir))[0]


def _read_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    from cafe_bench.results import read_run

    records, doc = read_run(run_dir)
    if not (records["status"] == "ok").any():
        raise CafeBenchError(
            f"{run_dir / RESULTS}: holds no record with status ok ({len(records)} skipped or failed); nothing to plot"
        )
    return records, doc


def _ok(records: pd.DataFrame, protocol: str | None = None, layer=None) -> pd.DataFrame:
    ok = records[records["status"] == "ok"]
    if protocol is not None:
        ok = ok[ok["protocol"] == protocol]
    if layer is not None:
        layers = [layer] if isinstance(layer, int | np.integer) else list(layer)
        ok = ok[ok["layer"].isin(layers)]
    return ok


def _methods(records: pd.DataFrame) -> list[str]:
    """Methods in order of first appearance (the run's order)."""
    return list(dict.fromkeys(records["method"]))


def _clusters(records: pd.DataFrame) -> np.ndarray:
    """Cluster label of each record: its feature, i.e. (layer, feature), since each layer has its own SAE."""
    return (records["layer"].astype(str) + ":" + records["feature"].astype(str)).to_numpy()


def _layers_text(layers) -> str:
    layers = sorted({int(x) for x in layers})
    return f"layer {layers[0]}" if len(layers) == 1 else "layers " + ", ".join(map(str, layers))


# ------------------------------------------------------------------------------------------- curve summaries


def curve_summary(
    records: pd.DataFrame,
    protocol: str,
    layer=None,
    n_resamples: int = 1000,
    level: float = LEVEL,
    seed: int = 0,
    ci_method: str = "percentile",
) -> pd.DataFrame:
    """Mean normalised curve per method and its clustered bootstrap CI at every step.

    Args:
        records: result records (rows with status other than ``ok`` are ignored).
        protocol: ``insertion`` or ``deletion``.
        layer: a layer or list of layers to keep (default: all, pooled).
        n_resamples, level, seed, ci_method: passed to :func:`cafe_bench.stats.clustered_bootstrap_ci`
            (``method``); clusters are features, a feature being one layer's SAE feature, and units are
            resampled inside them.
    Returns:
        DataFrame with columns ``CURVE_SUMMARY_COLUMNS``: one row per method x step, where (mean, ci_low,
        ci_high) is ``clustered_bootstrap_ci`` of that step's values (the same seed at every step).
    """
    ok = _ok(records, protocol, layer)
    rows = []
    for method in _methods(ok):
        group = ok[ok["method"] == method]
        lengths = {len(c) for c in group["curve"]}
        if len(lengths) != 1:
            raise CafeBenchError(
                f"method {method!r}, {protocol}: curves of different lengths {sorted(lengths)}; "
                "plot records of one step count at a time"
            )
        curves = np.stack([np.asarray(c, dtype=np.float64) for c in group["curve"]])  # (N, S+1)
        fractions = np.asarray(group["fractions"].iloc[0], dtype=np.float64)
        clusters = _clusters(group)
        for k in range(len(fractions)):
            mean, low, high = clustered_bootstrap_ci(
                curves[:, k], clusters, n_resamples=n_resamples, level=level, seed=seed, method=ci_method
            )
            rows.append(
                {
                    "method": method,
                    "step": k,
                    "fraction": float(fractions[k]),
                    "n_units": len(curves),
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=CURVE_SUMMARY_COLUMNS)


# ------------------------------------------------------------------------------------------------- writing


def curves_figure(
    records: pd.DataFrame,
    protocol: str,
    layer=None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
    ci_method: str = "percentile",
) -> Figure:
    """Mean curve per method with its CI band at every step; the legend gives each method's mean AUC."""
    ok = _ok(records, protocol, layer)
    if ok.empty:
        raise CafeBenchError(
            f"no ok records for protocol {protocol!r}" + (f" at layer {layer}" if layer is not None else "")
        )
    summary = curve_summary(ok, protocol, n_resamples=n_resamples, level=level, seed=seed, ci_method=ci_method)
    aucs = ok.groupby("method")["auc"].mean()
    # legend order: best first (insertion: highest AUC, deletion: lowest)
    methods = sorted(_methods(ok), key=lambda m: -aucs[m] if higher_is_better(protocol) else aucs[m])
    fig = _new_figure(7.8, 4.4)
    with mpl.rc_context(_STYLE):
        ax = fig.add_subplot()
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":", zorder=0)
        ax.axhline(0.0, color="0.6", lw=0.8, ls=":", zorder=0)
        counts = {m: int(summary.loc[summary["method"] == m, "n_units"].iloc[0]) for m in methods}
        same_n = len(set(counts.values())) == 1
        for method in methods:
            s = summary[summary["method"] == method]
            colour = method_colour(method)
            band = ax.fill_between(s["fraction"], s["ci_low"], s["ci_high"], color=colour, alpha=0.13, lw=0)
            band.set_gid(f"band:{method}")
            for edge in ("ci_low", "ci_high"):
                ax.plot(s["fraction"], s[edge], color=colour, lw=0.6, alpha=0.45)
            label = f"{method}: {aucs[method]:.3f}" + ("" if same_n else f" (n={counts[method]})")
            ax.plot(
                s["fraction"], s["mean"], color=colour, ls=_linestyle(method), lw=1.8, marker="o", ms=2.5, label=label
            )
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"fraction of patches {protocol_word(protocol)}")
        ax.set_ylabel(r"$z_k\ /\ z_k(\mathrm{clean})$")
        ax.grid(True, color="0.92", lw=0.6)
        baselines = ", ".join(sorted(ok["baseline"].astype(str).unique()))
        n_feat = len(set(_clusters(ok)))
        ax.set_title(
            f"{protocol.capitalize()} curves, baseline: {baselines}, {_layers_text(ok['layer'])}\n"
            f"mean over units, {level:.0%} {_ci_name(ci_method)} band ({n_feat} features); "
            f"{better_text(protocol)}",
            loc="left",
        )
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            title="method: mean AUC" + (f"\n({next(iter(counts.values()))} units each)" if same_n else ""),
            alignment="left",
            handlelength=2.4,
        )
    return fig


def plot_curves(
    records_df: pd.DataFrame,
    protocol: str,
    out_path: str | Path,
    layer=None,
    n_resamples: int = 1000,
    seed: int = 0,
    ci_method: str = "percentile",
) -> Path:
    """Write the ``protocol`` curves of ``records_df`` (optionally of ``layer`` only) to ``out_path``.

    One line per method: the mean of z_k(perturbed) / z_k(clean) over units against the fraction of patches
    inserted or deleted, with a 95% band from the clustered bootstrap (features, then units) at every step.
    The legend gives each method's mean AUC. Returns ``out_path``.
    """
    fig = curves_figure(records_df, protocol, layer, n_resamples, seed, ci_method=ci_method)
    return save_figure(fig, out_path)


# ---------------------------------------------------------------------------------------------- AUC by layer


def auc_by_layer_figure(
    records: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, ci_method: str = "percentile"
) -> Figure:
    """Two panels (insertion, deletion): mean AUC per method x layer with 95% clustered bootstrap CIs."""
    summary = summarize(records, n_resamples=n_resamples, level=LEVEL, seed=seed, ci_method=ci_method)
    summary = summary[summary["n_units"] > 0]
    protocols = [p for p in list_protocols() if p in set(summary["protocol"])]
    methods = _methods(records[records["method"].isin(summary["method"])])
    layers = sorted(summary["layer"].unique())
    pos = {layer: i for i, layer in enumerate(layers)}
    width = min(0.7, 0.12 * len(methods))
    offsets = {m: (i - (len(methods) - 1) / 2) * (width / max(len(methods) - 1, 1)) for i, m in enumerate(methods)}
    fig = _new_figure(max(3.2, 1.4 + 0.95 * len(layers)) * len(protocols) + 0.3, 4.5)
    with mpl.rc_context(_STYLE):
        axes = fig.subplots(1, len(protocols), squeeze=False)[0]
        for ax, protocol in zip(axes, protocols, strict=True):
            part = summary[summary["protocol"] == protocol]
            for method in methods:
                s = part[part["method"] == method].sort_values("layer")
                if s.empty:
                    continue
                x = np.array([pos[layer] for layer in s["layer"]]) + offsets[method]
                yerr = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
                ax.errorbar(
                    x,
                    s["mean"],
                    yerr=np.nan_to_num(yerr),
                    color=method_colour(method),
                    ls=_linestyle(method),
                    lw=1.0,
                    marker="o",
                    ms=5,
                    capsize=3,
                    elinewidth=1.2,
                    label=method,
                )
            ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
            ax.set_xlim(-0.6, len(layers) - 0.4)
            ax.set_xlabel("layer (SAE at transformer block)")
            ax.set_ylabel(f"{protocol} AUC")
            ax.grid(True, axis="y", color="0.92", lw=0.6)
            ax.set_title(f"{protocol.capitalize()} ({better_text(protocol)})")
        baselines = ", ".join(sorted(records["baseline"].astype(str).unique()))
        fig.suptitle(f"Mean AUC by layer, baseline: {baselines}\nerror bars: {LEVEL:.0%} {_ci_name(ci_method)} CI")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), frameon=False)
    return fig


def plot_auc_by_layer(
    records_df: pd.DataFrame,
    out_path: str | Path,
    n_resamples: int = 1000,
    seed: int = 0,
    ci_method: str = "percentile",
) -> Path:
    """Write mean AUC per method against layer, insertion and deletion side by side, to ``out_path``.

    The numbers are those of :func:`cafe_bench.leaderboard.summarize` (same bootstrap, same seed).
    Returns ``out_path``.
    """
    return save_figure(auc_by_layer_figure(records_df, n_resamples, seed, ci_method), out_path)


# ------------------------------------------------------------------------------------------------- one unit
