"""Figures of a validity document (``DIR/validity.json``, :mod:`cafe_bench.validity`)."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from cafe_bench.plots.style import _STYLE, _new_figure


def _layer_values(by_layer: dict | None, layers: list[str]) -> np.ndarray:
    """Values of ``{layer: value}`` in the order of ``layers``; a missing or None value is NaN (no bar)."""
    by_layer = by_layer or {}
    return np.array([np.nan if by_layer.get(k) is None else float(by_layer[k]) for k in layers])


def nonlocality_figure(validity_doc: dict) -> Figure:
    """Bar plot of the share of non-local units per layer, from a validity document.

    Bars per layer: the run's units (``nonlocal_fraction``), and, where the document has them, the feature
    set's candidate fraction (``candidate_nonlocal_fraction``) and the share truly non-local on the reference
    (``nonlocality_check.truth_fraction_by_layer``). The title gives the criterion's threshold and radius.

    >>> fig = nonlocality_figure(json.load(open("runs/tiny/validity.json")))  # doctest: +SKIP
    """
    layers = sorted(validity_doc["layers"], key=int)
    check = validity_doc.get("nonlocality_check") or {}
    series = [
        ("units of the run", {k: v.get("nonlocal_fraction") for k, v in validity_doc["layers"].items()}, "#1f77b4"),
        ("feature-set candidates", validity_doc.get("candidate_nonlocal_fraction"), "#ff7f0e"),
        ("truly non-local (reference)", check.get("truth_fraction_by_layer"), "#2ca02c"),
    ]
    series = [(label, _layer_values(values, layers), c) for label, values, c in series if values]
    criterion = validity_doc.get("criterion") or {}
    width = 0.8 / max(len(series), 1)
    fig = _new_figure(max(4.5, 1.8 + 0.6 * len(layers) * len(series)), 3.8)
    with mpl.rc_context(_STYLE):
        ax = fig.add_subplot()
        x = np.arange(len(layers))
        for i, (label, values, colour) in enumerate(series):
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, color=colour)
            bars.set_label(label)
            for bar, value in zip(bars, values, strict=True):
                text = "n/a" if np.isnan(value) else f"{value:.2f}"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
        ax.set_xticks(x, layers)
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.set_ylim(0, 1.12)
        ax.set_xlabel("layer (SAE at transformer block)")
        ax.set_ylabel("share of non-local units")
        ax.grid(True, axis="y", color="0.92", lw=0.6)
        ax.set_title(
            f"Non-local units\n(score > {criterion.get('threshold', 'n/a')}, "
            f"neighbourhood radius {criterion.get('radius', 'n/a')})",
            loc="left",
        )
        fig.legend(loc="outside lower center", ncols=len(series), frameon=False)
    return fig


__all__ = ["nonlocality_figure"]
