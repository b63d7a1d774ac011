import json
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

import cafe_bench
from cafe_bench.errors import CafeBenchError
from cafe_bench.plots import (
    curve_summary,
    curves_figure,
    load_results,
    method_colour,
    plot_curves,
    plot_run,
    unit_figure,
)
from cafe_bench.stats import clustered_bootstrap_ci

METHODS = ["activation", "random"]
N_RESAMPLES = 200


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, suite):
    """A small stored run: two methods, both protocols, ten layer-1 units over three features (4, 4, 2 units)."""
    out = tmp_path_factory.mktemp("plots") / "run"
    cafe_bench.run("tiny", methods=METHODS, units=suite.units([1])[:10], out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def records(run_dir):
    return load_results(run_dir)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_run_writes_every_figure_in_both_formats(run_dir, suite, tmp_path):
    out = tmp_path / "figures"
    paths = plot_run(run_dir, out, formats=("png", "svg"), suite=suite, n_resamples=N_RESAMPLES)
    first = load_results(run_dir).iloc[0]
    unit = f"unit_L{first['layer']}_F{first['feature']}_I{first['image_id']}_T{first['token']}"
    stems = ["curves_insertion", "curves_deletion", "auc_by_layer", unit]
    assert sorted(p.name for p in paths) == sorted(f"{s}.{f}" for s in stems for f in ("png", "svg"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000, path
        if path.suffix == ".png":
            width, height = _png_size(data)
            assert 600 <= width <= 4000 and 300 <= height <= 2000, (path.name, width, height)
        else:
            root = ET.fromstring(data)
            assert root.tag.endswith("svg")
    svg = (out / "curves_insertion.svg").read_text()
    assert "fraction of patches inserted" in svg and "activation" in svg  # text stays text


def test_band_at_each_step_equals_the_clustered_bootstrap_of_that_step(records):
    summary = curve_summary(records, "insertion", n_resamples=N_RESAMPLES, seed=3)
    ok = records[(records["status"] == "ok") & (records["protocol"] == "insertion")]
    for method in METHODS:
        units = ok[ok["method"] == method]
        curves = np.stack(units["curve"].to_list())
        rows = summary[summary["method"] == method].set_index("step")
        assert len(rows) == curves.shape[1] and (rows["n_units"] == len(units)).all()
        np.testing.assert_allclose(rows["mean"].to_numpy(dtype=float), curves.mean(0), rtol=1e-12)
        for step in (0, 3, curves.shape[1] - 2):
            expected = clustered_bootstrap_ci(
                curves[:, step], units["feature"].to_numpy(), n_resamples=N_RESAMPLES, level=0.95, seed=3
            )
            got = rows.loc[step, ["mean", "ci_low", "ci_high"]].to_numpy(dtype=float)
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_the_drawn_band_is_the_summary(records):
    summary = curve_summary(records, "deletion", n_resamples=N_RESAMPLES)
    fig = curves_figure(records, "deletion", n_resamples=N_RESAMPLES)
    ax = fig.axes[0]
    for method in METHODS:
        rows = summary[summary["method"] == method]
        band = [c for c in ax.collections if c.get_gid() == f"band:{method}"]
        assert len(band) == 1
        assert np.allclose(band[0].get_facecolor()[0][:3], to_rgba(method_colour(method))[:3])
        vertices = band[0].get_paths()[0].vertices
        for _, row in rows.iloc[[2, 7]].iterrows():
            ys = vertices[np.isclose(vertices[:, 0], row["fraction"]), 1]
            assert np.isclose(ys, row["ci_low"]).any() and np.isclose(ys, row["ci_high"]).any()
        line = [ln for ln in ax.lines if ln.get_label().startswith(f"{method}:")]
        assert len(line) == 1 and np.allclose(line[0].get_ydata(), rows["mean"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    mean_auc = records[(records["protocol"] == "deletion") & (records["method"] == "random")]["auc"].mean()
    assert f"random: {mean_auc:.3f}" in legend


def test_pooled_layers_cluster_by_layer_and_feature():
    rng = np.random.default_rng(0)
    rows = []
    for layer, feature, n in [(1, 7, 3), (3, 7, 2), (3, 9, 4)]:  # feature 7 of two different SAEs
        for i in range(n):
            curve = rng.random(5).tolist()
            rows.append(
                dict(layer=layer, feature=feature, image_id=i, token=0, method="m", protocol="insertion")
                | dict(status="ok", fractions=np.linspace(0, 1, 5).tolist(), curve=curve, auc=0.5, baseline="blur")
            )
    df = pd.DataFrame(rows)
    summary = curve_summary(df, "insertion", n_resamples=N_RESAMPLES, seed=1)
    values = np.array([r["curve"][2] for r in rows])
    clusters = [f"{r['layer']}:{r['feature']}" for r in rows]
    expected = clustered_bootstrap_ci(values, clusters, n_resamples=N_RESAMPLES, seed=1)
    np.testing.assert_allclose(summary.loc[2, ["mean", "ci_low", "ci_high"]].to_numpy(float), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), ("", "holds no records"), ("skipped", "holds no record with status ok")],
)
def test_a_dir_without_results_raises_naming_the_file(run_dir, tmp_path, content, message):
    if content is not None:
        (tmp_path / "run.json").write_bytes((run_dir / "run.json").read_bytes())  # a valid run document
        line = ""
        if content:  # one record of the run, turned into a dead-feature skip
            rec = json.loads((run_dir / "results.jsonl").read_text().splitlines()[0])
            rec |= {"status": "skipped: dead feature", "fractions": None, "curve": None, "auc": None}
            line = json.dumps(rec) + "\n"
        (tmp_path / "results.jsonl").write_text(line)
    with pytest.raises(CafeBenchError, match=f"results.jsonl: {message}") as info:
        plot_run(tmp_path, tmp_path / "figures")
    assert str(tmp_path / "results.jsonl") in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "figures").exists()


def test_unknown_format_and_bad_unit_are_user_errors(run_dir, tmp_path):
    with pytest.raises(CafeBenchError, match="unknown figure format 'bmpx'"):
        plot_run(run_dir, tmp_path, formats=("png", "bmpx"))
    with pytest.raises(CafeBenchError, match="a unit is LAYER,FEATURE,IMAGE_ID,TOKEN"):
        plot_run(run_dir, tmp_path, formats=("png",), unit=(1, 46, 3), n_resamples=10)
    with pytest.raises(CafeBenchError, match="integer layer, feature and token"):
        plot_run(run_dir, tmp_path, formats=("png",), unit=("1", "46", "3", "x"), n_resamples=10)
    with pytest.raises(CafeBenchError, match="unknown CI method 'bc'"):
        plot_run(run_dir, tmp_path, formats=("png",), ci_method="bc")
    with pytest.raises(CafeBenchError, match="unknown method 'nope'"):
        plot_run(run_dir, tmp_path, formats=("png",), methods=["activation", "nope"], n_resamples=10)
    assert not any(tmp_path.iterdir())


def test_unit_figure_has_image_activation_and_one_panel_per_method(suite):
    unit = suite.units([1])[0]
    fig = unit_figure(suite, unit, METHODS)
    panels = [ax for ax in fig.axes if ax.images]  # colour bars hold no image
    assert len(panels) == 2 + len(METHODS)
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == f"image {unit.image_id}" and "activation" in titles[1]
    assert [t.split("\n")[0] for t in titles[2:]] == METHODS
    assert len(fig.axes) == len(panels) + 2  # one colour bar for z_k, one shared by the ERF maps
    row, col = divmod(unit.token, 8)
    for ax in panels:
        boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
        assert boxes and all(b.get_xy() == (col * 8, row * 8) for b in boxes)


def test_plot_curves_of_one_layer_and_colours_are_stable(records, tmp_path):
    path = plot_curves(records, "insertion", tmp_path / "one.png", layer=1, n_resamples=N_RESAMPLES)
    assert _png_size(path.read_bytes())[0] > 600
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]
    import subprocess
    import sys

    code = "from cafe_bench.plots import method_colour as c; print(c('activation'), c('my_plugin'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert other == [method_colour("activation"), method_colour("my_plugin")]  # stable across processes
    assert method_colour("activation") != method_colour("cp_lrp")
    builtins = ["activation", "random", "gradient", "grad_x_input", "integrated_gradients"]
    builtins += ["smoothgrad", "occlusion", "kernel_shap", "cp_lrp", "attnlrp"]
    assert len({method_colour(m) for m in builtins}) == len(builtins)
