"""The built-in photos suite: what ships, and its committed board reproduces from the stored records and from a
fresh run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import cafe_bench
from cafe_bench.cli import main
from cafe_bench.leaderboard import render, summarize
from cafe_bench.results import read_run
from cafe_bench.store import record_key
from cafe_bench.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ROOT / "leaderboards"
SUITE_DIR = ROOT / "cafe_bench" / "suites" / "photos"


@pytest.fixture(scope="module")
def photos():
    return load_suite("photos")


@pytest.fixture(scope="module")
def committed():
    records, run_doc = read_run(BOARDS / "photos")
    return records, run_doc, json.loads((BOARDS / "photos.json").read_text())


def test_suite_ships_what_the_issue_asks(photos):
    assert photos.layers == [3, 7, 10]
    assert photos.backbone.grid == (8, 8) and photos.backbone.n_blocks == 12 and photos.backbone.width == 384
    units = photos.units()
    for layer in photos.layers:
        mine = [u for u in units if u.layer == layer]
        assert len({u.feature for u in mine}) >= 12 and len(mine) >= 24
    assert all(isinstance(u.image_id, str) for u in units)
    assert len(photos.image_source.ids()) == 84
    for layer in photos.layers:
        sae = photos.saes[layer]
        assert sae.format == "saelens" and sae.d_in == 384 and sae.d_sae == 1536 and sae.hook.layer == layer
    shipped = sum(p.stat().st_size for p in SUITE_DIR.rglob("*") if p.is_file())
    assert shipped < 8 * 2**20


def test_board_rows_reproduce_from_the_stored_records(committed, photos):
    records, run_doc, board = committed
    summary = summarize(records, **board["statistics"])
    expected = pd.DataFrame(board["rows"])
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), expected[summary.columns], check_dtype=False)
    assert board["config"] == run_doc["config"]
    assert (BOARDS / "photos.md").read_text() == render(summary, "md", by="method")
    assert set(records["method"]) == set(cafe_bench.runner.DEFAULT_METHODS)
    assert len(records) == len(photos.units()) * len(cafe_bench.runner.DEFAULT_METHODS) * 2
    assert board["config"]["suite_files"] == photos.hashes
    assert (records["status"] != "failed").all()


def test_stored_records_match_a_fresh_run(committed, photos):
    records, _, _ = committed
    units = photos.units([3])[:6] + photos.units([10])[:4]
    methods = ["activation", "gradient", "attnlrp", "random"]
    fresh = cafe_bench.run(photos, methods=methods, layers=[3, 10], units=units, progress=False)
    assert len(fresh) == len(units) * len(methods) * 2
    stored = {record_key(r): r for r in records.to_dict("records")}
    for rec in fresh.to_dict("records"):
        old = stored[record_key(rec)]
        assert rec["status"] == old["status"]
        if rec["status"] == "ok":
            assert rec["auc"] == pytest.approx(old["auc"], rel=1e-5, abs=1e-7)


def test_the_board_gates_its_own_run(capsys):
    assert main(["compare", str(BOARDS / "photos"), "--board", str(BOARDS / "photos.json")]) == 0
    assert "PASS: no regression" in capsys.readouterr().out


def test_rebuilding_into_a_folder_of_another_build_is_refused(tmp_path):
    from dataclasses import asdict, replace

    from cafe_bench.errors import CafeBenchError
    from cafe_bench.suites.photos_build import PhotosBuildConfig, build_photos

    other = replace(PhotosBuildConfig(), d_sae=256)
    (tmp_path / "build_report.json").write_text(json.dumps({"config": asdict(other)}))
    with pytest.raises(CafeBenchError, match="holds a build of another configuration"):
        build_photos(tmp_path, PhotosBuildConfig(), progress=False)
    shipped = json.loads((SUITE_DIR / "build_report.json").read_text())["config"]
    assert shipped == json.loads(json.dumps(asdict(PhotosBuildConfig())))  # the shipped files are this config's
