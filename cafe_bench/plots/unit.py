"""One unit's image, activation map and the ERF map of each method (the paper's figure style)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cafe_bench.plots.curves import _ok
from cafe_bench.plots.style import _STYLE, _UNIT_COLUMNS, _new_figure, method_colour, save_figure


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
