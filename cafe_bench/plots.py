"""Figures of a run: insertion/deletion curves with clustered bootstrap bands, mean AUC by layer, and one
unit's activation map beside the ERF map of each method.

Figures are built as ``matplotlib.figure.Figure`` objects drawn by the Agg canvas, without pyplot: nothing is
shown, no global backend is switched, and no figure stays registered anywhere (a figure is freed once it is
saved and dropped). Every file is written atomically: to a temporary name in the same directory, then renamed.

>>> from cafe_bench.plots import plot_run
>>> paths = plot_run("runs/tiny", "runs/tiny/figures")     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cafe_bench.errors import CafeBenchError
from cafe_bench.leaderboard import summarize
from cafe_bench.stats import CI_METHODS, clustered_bootstrap_ci
from cafe_bench.store import RESULTS, RUN

LEVEL = 0.95
"""Confidence level of every band and error bar."""

CURVE_SUMMARY_COLUMNS = ["method", "step", "fraction", "n_units", "mean", "ci_low", "ci_high"]

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text in SVG: searchable and editable
    "svg.hashsalt": "cafe-bench",  # stable element ids: the same results give the same SVG bytes
    "savefig.dpi": 150,
}

_COLOURS = {
    "activation": "#1f77b4",
    "random": "#7f7f7f",
    "gradient": "#2ca02c",
    "grad_x_input": "#bcbd22",
    "integrated_gradients": "#9467bd",
    "smoothgrad": "#8c564b",
    "occlusion": "#e377c2",
    "kernel_shap": "#17becf",
    "cp_lrp": "#d62728",
    "attnlrp": "#ff7f0e",
}
"""Colours of the built-in methods; the random control is grey."""

_EXTRA_COLOURS = [
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
]

_UNIT_COLUMNS = 6
"""Panels per row of a unit figure; more methods wrap to further rows."""
_PROTOCOL_WORD = {"insertion": "inserted", "deletion": "deleted"}
_BETTER = {"insertion": "higher AUC is better", "deletion": "lower AUC is better"}


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure: fixed for built-ins, derived from a hash of the name otherwise
    (stable across runs and processes)."""
    if method in _COLOURS:
        return _COLOURS[method]
    digest = int(hashlib.sha256(method.encode()).hexdigest(), 16)
    return _EXTRA_COLOURS[digest % len(_EXTRA_COLOURS)]


def _ci_name(ci_method: str) -> str:
    return "clustered bootstrap" + (" BCa" if ci_method == "bca" else "")


def _linestyle(method: str) -> str:
    return "--" if method == "random" else "-"


# ---------------------------------------------------------------------------------------------------- records


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


def _new_figure(width: float, height: float) -> Figure:
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_path: str | Path) -> Path:
    """Write ``fig`` to ``out_path`` (format from the suffix) through a temporary file and a rename."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower()
    if not fmt:
        raise CafeBenchError(f"{out_path}: give a file name with a format suffix, e.g. .png or .svg")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name per call (open "x" fails rather than clobber); unlike mkstemp it keeps the umask's permissions
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as fh, mpl.rc_context(_STYLE):
            fig.savefig(fh, format=fmt, metadata=_metadata(fmt))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def _metadata(fmt: str) -> dict | None:
    """No creation date in SVG/PDF, so that the same results give the same bytes."""
    if fmt == "svg":
        return {"Date": None}
    if fmt == "pdf":
        return {"CreationDate": None}
    return None


# ----------------------------------------------------------------------------------------------- the curves


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
    methods = sorted(_methods(ok), key=lambda m: -aucs[m] if protocol != "deletion" else aucs[m])
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
        ax.set_xlabel(f"fraction of patches {_PROTOCOL_WORD.get(protocol, 'perturbed')}")
        ax.set_ylabel(r"$z_k\ /\ z_k(\mathrm{clean})$")
        ax.grid(True, color="0.92", lw=0.6)
        baselines = ", ".join(sorted(ok["baseline"].astype(str).unique()))
        n_feat = len(set(_clusters(ok)))
        ax.set_title(
            f"{protocol.capitalize()} curves, baseline: {baselines}, {_layers_text(ok['layer'])}\n"
            f"mean over units, {level:.0%} {_ci_name(ci_method)} band ({n_feat} features); "
            f"{_BETTER.get(protocol, '')}",
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
    protocols = [p for p in ("insertion", "deletion") if p in set(summary["protocol"])]
    protocols += sorted(set(summary["protocol"]) - set(protocols))
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
            ax.set_title(f"{protocol.capitalize()} ({_BETTER.get(protocol, '')})")
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


def unit_maps(suite, unit, methods: Sequence[str], baseline: str | None = None, seed: int = 0, method_params=None):
    """The arrays of a unit figure: (image (H, W, 3), activation map (gh, gw), {method: ERF map (gh, gw)}).

    The activation map is z_k of the unit's feature at every patch token of the clean image; an ERF map is the
    method's patch scores for the unit (``Attributor.scores``), computed with the run's ``baseline`` and
    ``seed``; ``method_params`` maps a method to the parameters it was run with. A method that raises
    AttributorError gets its message instead of a map.
    """
    import torch

    from cafe_bench.attributors.base import AttributorError
    from cafe_bench.attributors.registry import get_attributor

    attributors = {m: get_attributor(m, **((method_params or {}).get(m) or {})) for m in methods}
    target = suite.target([unit], baseline=baseline, seed=seed)
    with torch.no_grad():
        act = target.feature_map(target.images)[0].detach().cpu().numpy()
    erf = {}
    for m, a in attributors.items():
        try:
            erf[m] = a.scores(target)[0].detach().cpu().numpy().astype(np.float64)
        except AttributorError as exc:  # shown as a failed panel, like a failed record
            erf[m] = str(exc)
    image = target.images[0].detach().cpu().permute(1, 2, 0).numpy().clip(0, 1)
    return image, act, erf


def _overlay(ax, image, grey, values, norm, cmap, extent, signed: bool) -> None:
    """Heatmap over a greyed image; opacity grows with |value| so weak patches keep the image visible."""
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    rgba = cmap(norm(values))
    strength = np.abs(values) / norm.vmax if signed else (values - norm.vmin) / (norm.vmax - norm.vmin)
    rgba[..., 3] = 0.1 + 0.75 * np.clip(np.nan_to_num(strength), 0, 1)
    ax.imshow(rgba, extent=extent, interpolation="nearest")


def _mark_token(ax, unit, grid, patch_size) -> None:
    row, col = divmod(int(unit.token), grid[1])
    for colour, lw in (("black", 3.2), ("#00ff66", 1.6)):
        ax.add_patch(
            Rectangle(
                (col * patch_size, row * patch_size),
                patch_size,
                patch_size,
                fill=False,
                ec=colour,
                lw=lw,
                clip_on=False,
            )
        )


def unit_figure(
    suite,
    unit,
    methods: Sequence[str],
    baseline: str | None = None,
    seed: int = 0,
    method_params=None,
    records_df: pd.DataFrame | None = None,
) -> Figure:
    """The figure of one unit: the image, its activation map and the ERF map of each method, the unit's token
    boxed in every panel. ``fig.axes``: 0 the image, 1 the activation map, 2.. one per method, then the colour
    bar of the activation map and (with methods) the one shared by the ERF maps.

    The activation map is shown in z_k units (its own colour bar); each ERF map is divided by its largest
    absolute score, sharing one colour bar on [-1, 1] (drawn under the first method's panel). With
    ``records_df``, each method's title adds the unit's insertion and deletion AUCs.
    """
    image, act, erf = unit_maps(suite, unit, methods, baseline, seed, method_params)
    grid = act.shape
    patch_size = image.shape[0] // grid[0]
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    grey = image @ np.array([0.299, 0.587, 0.114])
    grey = 0.35 + 0.5 * grey  # lighten so that the heatmap colours read on top
    aucs = _unit_aucs(records_df, unit)

    n = 2 + len(methods)
    ncols = min(n, _UNIT_COLUMNS)
    nrows = -(-n // ncols)
    fig = _new_figure(2.25 * ncols + 1.2, 3.4 * nrows)
    fig.get_layout_engine().set(h_pad=0.06)  # room between the suptitle and two-line panel titles
    with mpl.rc_context(_STYLE):
        # panel rows, with a thin row for the colour bars under the first one: every panel keeps the same size
        gs = fig.add_gridspec(nrows + 1, ncols, height_ratios=[1, 0.055] + [1] * (nrows - 1))
        axes = [fig.add_subplot(gs[0 if i < ncols else i // ncols + 1, i % ncols]) for i in range(n)]
        axes[0].imshow(image, extent=extent, interpolation="nearest")
        axes[0].set_title(f"image {unit.image_id}")

        act_cmap = mpl.colormaps["inferno"]
        act_norm = Normalize(0.0, max(float(act.max()), 1e-12))
        _overlay(axes[1], image, grey, act, act_norm, act_cmap, extent, signed=False)
        axes[1].set_title("activation $z_k$")
        act_bar = mpl.cm.ScalarMappable(norm=act_norm, cmap=act_cmap)

        erf_cmap = mpl.colormaps["RdBu_r"]
        erf_norm = Normalize(-1.0, 1.0)
        for ax, method in zip(axes[2:], methods, strict=True):
            scores = erf[method]
            if isinstance(scores, str):
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
                message = "failed:\n" + textwrap.fill(scores, 26, max_lines=6, placeholder=" …")
                ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=8)
                ax.texts[-1].set_bbox({"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
            else:
                peak = float(np.abs(scores).max())
                shown = scores / peak if peak > 0 else scores
                _overlay(ax, image, grey, shown, erf_norm, erf_cmap, extent, signed=True)
            title = method
            if method in aucs:
                title += "\n" + aucs[method]
            ax.set_title(title)
        frames = ["0.7", "0.7", *(method_colour(m) for m in methods)]  # a method's frame: its colour in the curves
        for ax, frame in zip(axes, frames, strict=True):
            _mark_token(ax, unit, grid, patch_size)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(frame)
                spine.set_linewidth(1.0 if frame == "0.7" else 2.0)
        fig.colorbar(act_bar, cax=fig.add_subplot(gs[1, 1]), orientation="horizontal", label="$z_k$ (clean image)")
        if methods:
            sm = mpl.cm.ScalarMappable(norm=erf_norm, cmap=erf_cmap)
            cax = fig.add_subplot(gs[1, 2 : min(n, ncols)])
            ticks = [-1, -0.5, 0, 0.5, 1]
            fig.colorbar(
                sm, cax=cax, orientation="horizontal", ticks=ticks, label="ERF score / max |score| of each map"
            )
        row, col = divmod(int(unit.token), grid[1])
        fig.suptitle(
            f"layer {unit.layer}, feature {unit.feature}, image {unit.image_id}, token {unit.token} "
            f"(row {row}, col {col}, boxed); ERF maps normalised per method"
        )
    return fig


def _unit_aucs(records_df: pd.DataFrame | None, unit) -> dict[str, str]:
    if records_df is None or records_df.empty:
        return {}
    ok = _ok(records_df)
    ok = ok[
        (ok["layer"] == unit.layer)
        & (ok["feature"] == unit.feature)
        & (ok["image_id"] == unit.image_id)
        & (ok["token"] == unit.token)
    ]
    out = {}
    for method, group in ok.groupby("method"):
        by = dict(zip(group["protocol"], group["auc"], strict=True))
        parts = [f"{p[:3]} {by[p]:.2f}" for p in ("insertion", "deletion") if p in by]
        out[method] = "AUC " + ", ".join(parts)
    return out


def plot_unit(
    suite,
    unit,
    methods: Sequence[str],
    out_path: str | Path,
    baseline: str | None = None,
    seed: int = 0,
    method_params=None,
    records_df: pd.DataFrame | None = None,
) -> Path:
    """Write :func:`unit_figure` of ``unit`` with ``methods`` to ``out_path``. Returns ``out_path``."""
    fig = unit_figure(suite, unit, methods, baseline, seed, method_params, records_df)
    return save_figure(fig, out_path)


# ------------------------------------------------------------------------------------------------- a run dir


def _first_ok_unit(records: pd.DataFrame):
    from cafe_bench.target import Unit

    row = _ok(records).iloc[0]
    return Unit(int(row["layer"]), int(row["feature"]), int(row["image_id"]), int(row["token"]))


def _load_run_suite(config: dict, records: pd.DataFrame, run_dir: Path):
    from cafe_bench.suites import load_suite

    name = config.get("suite") or str(records["suite"].iloc[0])
    try:
        suite = load_suite(name)
    except CafeBenchError:
        raise CafeBenchError(
            f"{run_dir}: the run's suite {name!r} is not built in; pass suite= (a loaded Suite or its directory)"
        ) from None
    expected = config.get("suite_files")
    if expected and expected != suite.hashes:
        raise CafeBenchError(f"{run_dir / RUN}: suite {name!r} installed here differs from the one of the run")
    return suite


def plot_run(
    run_dir: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "svg"),
    unit=None,
    methods: Sequence[str] | None = None,
    suite=None,
    n_resamples: int = 1000,
    seed: int = 0,
    ci_method: str = "percentile",
) -> list[Path]:
    """Write every figure of the run in ``run_dir`` to ``out_dir``, in each of ``formats`` (a list or "png,svg").

    Files: ``curves_<protocol>.<fmt>`` per protocol (all layers pooled), ``auc_by_layer.<fmt>``, and
    ``unit_L<layer>_F<feature>_I<image>_T<token>.<fmt>`` for ``unit`` (a ``Unit`` or 4 integers; default: the
    first unit with status ok) with ``methods`` (default: the run's methods, at most 4), each computed with the
    run's baseline, seed and method parameters. ``suite`` (a Suite, name or directory) overrides the suite
    named in run.json. ``n_resamples``, ``seed`` and ``ci_method`` set the bootstrap, as in the leaderboard.

    Returns:
        the written paths, figure by figure, in the order of ``formats``.
    Raises:
        CafeBenchError naming the file if the directory holds no results, with an unknown format or a bad unit.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if isinstance(formats, str):
        formats = formats.split(",")
    formats = [str(f).strip().lstrip(".").lower() for f in formats if str(f).strip()]
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    bad = [f for f in formats if f not in supported]
    if bad or not formats:
        raise CafeBenchError(
            f"unknown figure format {bad[0]!r}; valid: {', '.join(sorted(supported))}"
            if bad
            else "give at least one figure format, e.g. png,svg"
        )
    if ci_method not in CI_METHODS:
        raise CafeBenchError(f"unknown CI method {ci_method!r}; valid: {', '.join(CI_METHODS)}")
    if int(n_resamples) < 1:
        raise CafeBenchError(f"n_resamples must be at least 1, got {n_resamples}")
    records, doc = _read_run(run_dir)
    config = doc.get("config", {})
    stats = {"n_resamples": n_resamples, "seed": seed, "ci_method": ci_method}

    from cafe_bench.attributors.registry import attributor_class
    from cafe_bench.suites import Suite, load_suite
    from cafe_bench.target import Unit

    if unit is None:
        unit = _first_ok_unit(records)
    elif not isinstance(unit, Unit):
        if len(unit) != 4:
            raise CafeBenchError(f"a unit is LAYER,FEATURE,IMAGE_ID,TOKEN (4 integers), got {unit!r}")
        unit = Unit(*(int(v) for v in unit))
    methods = list(methods) if methods is not None else (config.get("methods") or _methods(records))[:4]
    for method in methods:
        attributor_class(method)  # an unknown name raises here, listing the valid ones
    if suite is None:
        suite = _load_run_suite(config, records, run_dir)
    elif not isinstance(suite, Suite):
        suite = load_suite(suite)
    suite.check_unit(unit)
    present = list(dict.fromkeys(_ok(records)["protocol"]))
    protocols = [p for p in config.get("protocols", present) if p in present]
    figures = {f"curves_{p}": curves_figure(records, p, **stats) for p in protocols}
    figures["auc_by_layer"] = auc_by_layer_figure(records, **stats)
    name = f"unit_L{unit.layer}_F{unit.feature}_I{unit.image_id}_T{unit.token}"
    figures[name] = unit_figure(
        suite,
        unit,
        methods,
        baseline=config.get("baseline"),
        seed=int(config.get("seed", 0)),
        method_params=config.get("method_params"),
        records_df=records,
    )
    written = []
    for stem, fig in figures.items():
        for fmt in formats:
            written.append(save_figure(fig, out_dir / f"{stem}.{fmt}"))
    return written


__all__ = [
    "auc_by_layer_figure",
    "curve_summary",
    "curves_figure",
    "load_results",
    "method_colour",
    "plot_auc_by_layer",
    "plot_curves",
    "plot_run",
    "plot_unit",
    "save_figure",
    "unit_figure",
    "unit_maps",
]
