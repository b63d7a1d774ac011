"""Shared look of the figures: method colours and line styles, figure creation, atomic saving."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cafe_bench.errors import CafeBenchError
from cafe_bench.files import write_atomic

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


def protocol_word(protocol: str) -> str:
    """How the x axis of a protocol's curve reads: ``inserted``/``deleted``, least relevant first for LeRF."""
    from cafe_bench.protocols.registry import get_protocol

    spec = get_protocol(protocol)
    word = "inserted" if spec.start == "baseline" else "deleted"
    return word + (" (least relevant first)" if spec.order == "least" else "")


def better_text(protocol: str) -> str:
    """``higher AUC is better`` or ``lower AUC is better``, from the protocol registry."""
    from cafe_bench.protocols.registry import higher_is_better

    return "higher AUC is better" if higher_is_better(protocol) else "lower AUC is better"


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


def _new_figure(width: float, height: float) -> Figure:
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_path: str | Path) -> Path:
    """Write ``fig`` to ``out_path`` (format from the suffix), atomically."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower()
    if not fmt:
        raise CafeBenchError(f"{out_path}: give a file name with a format suffix, e.g. .png or .svg")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def write(fh) -> None:
        with mpl.rc_context(_STYLE):
            fig.savefig(fh, format=fmt, metadata=_metadata(fmt))

    write_atomic(out_path, write)
    return out_path


def _metadata(fmt: str) -> dict | None:
    """No creation date in SVG/PDF, so that the same results give the same bytes."""
    if fmt == "svg":
        return {"Date": None}
    if fmt == "pdf":
        return {"CreationDate": None}
    return None


# ----------------------------------------------------------------------------------------------- the curves
