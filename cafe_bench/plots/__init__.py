"""Figures of a run: insertion/deletion curves with clustered bootstrap bands, mean AUC by layer, and one
unit's activation map beside the ERF map of each method.

Figures are built as ``matplotlib.figure.Figure`` objects drawn by the Agg canvas, without pyplot: nothing is
shown, no global backend is switched, and no figure stays registered anywhere (a figure is freed once it is
saved and dropped). Every file is written atomically: to a temporary name in the same directory, then renamed.

>>> from cafe_bench.plots import plot_run
>>> paths = plot_run("runs/tiny", "runs/tiny/figures")     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cafe_bench.errors import CafeBenchError
from cafe_bench.plots.curves import (
    _methods,
    _ok,
    _read_run,
    auc_by_layer_figure,
    curve_summary,
    curves_figure,
    load_results,
    plot_auc_by_layer,
    plot_curves,
)
from cafe_bench.plots.style import method_colour, save_figure
from cafe_bench.plots.unit import plot_unit, unit_figure, unit_maps
from cafe_bench.schema import image_key
from cafe_bench.stats import CI_METHODS
from cafe_bench.store import RUN


def _first_ok_unit(records: pd.DataFrame):
    from cafe_bench.target import Unit

    row = _ok(records).iloc[0]
    image = row["image_id"]
    image = image if isinstance(image, str) else int(image)
    return Unit(int(row["layer"]), int(row["feature"]), image, int(row["token"]))


def _load_run_suite(config: dict, records: pd.DataFrame, run_dir: Path):
    from cafe_bench.suites import check_run_files, load_suite

    name = config.get("suite") or str(records["suite"].iloc[0])
    try:
        suite = load_suite(name)
    except CafeBenchError:
        raise CafeBenchError(
            f"{run_dir}: the run's suite {name!r} is not built in; pass its file or directory (--suite / suite=)"
        ) from None
    check_run_files(suite, config, run_dir / RUN)
    return suite


def run_unit_figure(suite, unit, methods, config: dict, records: pd.DataFrame) -> Figure:
    """:func:`unit_figure` of ``unit`` as the run with ``config`` saw it (its baseline, seed and method parameters),
    with the unit's AUCs from ``records``."""
    return unit_figure(
        suite,
        unit,
        methods,
        baseline=config.get("baseline"),
        seed=int(config.get("seed", 0)),
        method_params=config.get("method_params"),
        records_df=records,
    )


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
            raise CafeBenchError(f"a unit is LAYER,FEATURE,IMAGE_ID,TOKEN, got {unit!r}")
        layer, feature, image, token = unit
        try:
            image = int(image) if isinstance(image, int) or str(image).isdigit() else str(image)
            unit = Unit(int(layer), int(feature), image, int(token))
        except ValueError:
            raise CafeBenchError(
                f"a unit is LAYER,FEATURE,IMAGE_ID,TOKEN with integer layer, feature and token, got {unit!r}"
            ) from None
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
    name = f"unit_L{unit.layer}_F{unit.feature}_I{image_key(unit.image_id)}_T{unit.token}"
    figures[name] = run_unit_figure(suite, unit, methods, config, records)
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
    "run_unit_figure",
    "unit_maps",
]
