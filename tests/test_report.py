import base64
import json
import re
import shutil

import numpy as np
import pytest

import cafe_bench
from cafe_bench.errors import CafeBenchError
from cafe_bench.plots.validity import nonlocality_figure
from cafe_bench.report import write_report
from cafe_bench.validity import VALIDITY_FILE, write_validity

METHODS = ["activation", "random"]
N_RESAMPLES = 100
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, suite):
    """A small stored run with its validity.json: two methods, both protocols, four layer-1 units."""
    out = tmp_path_factory.mktemp("report") / "run"
    units = suite.units([1])[:4]
    protocols = ["insertion", "deletion"]
    cafe_bench.run(suite, methods=METHODS, layers=[1], protocols=protocols, units=units, out=out, progress=False)
    write_validity(out, suite=suite, sanity_units=2, n_resamples=N_RESAMPLES, progress=False)
    return out


def _copy_run(run_dir, tmp_path):
    """A copy of the run directory without its validity.json."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns(VALIDITY_FILE))
    return out


def _rows(page: str) -> list[tuple[bool, list[str]]]:
    """(flagged, cell texts) of every table row of our tables."""
    rows = re.findall(r'<tr( class="flagged")?>(.*?)</tr>', page, flags=re.DOTALL)
    return [(bool(flag), re.findall(r"<td>(.*?)</td>", body, flags=re.DOTALL)) for flag, body in rows]


def test_report_of_a_real_run_is_one_self_contained_page(run_dir, tmp_path):
    # no suite given: the unit figures load the one run.json names
    path = write_report(run_dir, tmp_path / "out" / "report.html", n_units=2, n_resamples=N_RESAMPLES)
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for tag in ("<html", "<head>", "<body>", "</body>", "</html>"):
        assert page.count(tag) == 1, tag
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "url(" not in page

    images = re.findall(r"<img\b[^>]*>", page)
    # the non-locality bars, one curves figure per protocol, one figure per unit
    assert len(images) == 1 + 2 + 2
    for img in images:
        uri = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', img)
        assert uri, img[:80]
        assert base64.b64decode(uri.group(1), validate=True)[:8] == PNG_MAGIC

    board = page[page.index("1. Leaderboard") : page.index("2. Normalised AUC")]
    for method in METHODS:
        assert f"<td>{method}</td>" in board
    assert "has no frozen reference: no ground truth or oracle" in page.replace("&#x27;", "'")
    assert "Not available: suite &#x27;tiny&#x27; has no frozen reference" in page
    run_doc = json.loads((run_dir / "run.json").read_text())
    assert f"<dd>{run_doc['provenance']['cafe_bench_version']}</dd>" in page
    assert f"<dd>{run_doc['started']}</dd>" in page


def test_flagged_methods_are_marked_and_normalised_numbers_formatted(run_dir, tmp_path):
    out = _copy_run(run_dir, tmp_path)
    doc = json.loads((run_dir / VALIDITY_FILE).read_text())
    doc["layers"]["1"].update(
        normalised_auc={
            "insertion": {"activation": {"mean": 0.61234, "ci_low": 0.5, "ci_high": 0.70049, "n_units": 4}}
        },
        oracle_auc={"insertion": 0.95012},
        sanity={
            "activation": {"median_rho": 0.12345, "flagged": False, "n_units": 2},
            "random": {"median_rho": 0.98765, "flagged": True, "n_units": 2},
        },
        gt_agreement={"activation": 0.25, "random": -0.01},
        kendall_tau={"insertion": {"tau": 1.0, "p_value": 0.5, "n_methods": 2}},
    )
    doc["nonlocality_check"] = {"precision": 0.8, "recall": 0.625, "tp": 4, "fp": 1, "fn": 2, "tn": 9}
    doc["notes"] = []
    (out / VALIDITY_FILE).write_text(json.dumps(doc))
    page = write_report(out, tmp_path / "report.html", n_units=0, n_resamples=N_RESAMPLES).read_text()

    rows = _rows(page)
    assert (True, ["1", "random", "0.988", "2", "FLAGGED"]) in rows
    assert (False, ["1", "activation", "0.123", "2", "ok"]) in rows
    assert sum(flag for flag, _ in rows) == 1
    assert (False, ["1", "insertion", "activation", "0.612 [0.500, 0.700]", "4"]) in rows
    assert (False, ["1", "insertion", "0.950"]) in rows
    assert (False, ["1", "0.250", "-0.010", "1.000 (p 0.500, 2 methods)"]) in rows
    assert "precision 0.800, recall 0.625" in page
    assert "Not available" not in page
    assert "<img" not in page.split("6. Activation and ERF maps")[1]


def test_missing_validity_is_a_user_error_naming_the_command(run_dir, tmp_path):
    out = _copy_run(run_dir, tmp_path)
    with pytest.raises(CafeBenchError, match="cafe-bench validity") as info:
        write_report(out, tmp_path / "report.html")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "report.html").exists()


def test_nonlocality_figure_has_a_bar_series_per_available_fraction():
    doc = {
        "criterion": {"threshold": 0.5, "radius": 1},
        "layers": {"1": {"nonlocal_fraction": 0.25}, "11": {"nonlocal_fraction": None}},
        "candidate_nonlocal_fraction": None,
        "nonlocality_check": {"truth_fraction_by_layer": {"1": 0.5, "11": 0.75}},
    }
    ax = nonlocality_figure(doc).axes[0]
    assert [c.get_label() for c in ax.containers] == ["units of the run", "truly non-local (reference)"]
    heights = [[bar.get_height() for bar in c] for c in ax.containers]
    np.testing.assert_allclose(heights, [[0.25, 0.0], [0.5, 0.75]])
    assert [t.get_text() for t in ax.texts] == ["0.25", "n/a", "0.50", "0.75"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "11"]
