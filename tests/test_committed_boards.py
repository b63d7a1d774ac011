"""The committed board of the tiny suite reproduces from its stored records and from a fresh run."""

import json
from pathlib import Path

import pandas as pd
import pytest

import cafe_bench
from cafe_bench.cli import main
from cafe_bench.leaderboard import render, summarize
from cafe_bench.results import read_run
from cafe_bench.store import record_key

BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"


@pytest.fixture(scope="module")
def committed():
    records, run_doc = read_run(BOARDS / "tiny")
    return records, run_doc, json.loads((BOARDS / "tiny.json").read_text())


def test_board_rows_reproduce_from_the_stored_records(committed):
    records, run_doc, board = committed
    summary = summarize(records, **board["statistics"])
    expected = pd.DataFrame(board["rows"])
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), expected[summary.columns], check_dtype=False)
    assert board["config"] == run_doc["config"]
    assert (BOARDS / "tiny.md").read_text() == render(summary, "md", by="method")


def test_board_covers_every_builtin_method_on_every_unit(committed, suite):
    records, _, board = committed
    assert set(records["method"]) == set(cafe_bench.runner.DEFAULT_METHODS)
    assert len(records) == len(suite.units()) * len(cafe_bench.runner.DEFAULT_METHODS) * 2
    assert board["config"]["suite_files"] == suite.hashes


def test_stored_records_match_a_fresh_run_of_the_fast_methods(committed):
    records, _, _ = committed
    methods = ["activation", "gradient", "cp_lrp", "random", "smoothgrad", "kernel_shap"]  # seeded ones too
    fresh = cafe_bench.run("tiny", methods=methods, layers=[3], progress=False)
    assert len(fresh) == 32 * len(methods) * 2
    stored = {record_key(r): r for r in records.to_dict("records")}
    for rec in fresh.to_dict("records"):
        old = stored[record_key(rec)]
        assert rec["auc"] == pytest.approx(old["auc"], rel=1e-6, abs=1e-9)
        assert rec["curve"] == pytest.approx(old["curve"], rel=1e-6, abs=1e-9)


def test_the_board_gates_its_own_run(capsys):
    assert main(["compare", str(BOARDS / "tiny"), "--board", str(BOARDS / "tiny.json")]) == 0
    assert "PASS: no regression" in capsys.readouterr().out


def test_the_board_holds_every_units_auc(committed):
    records, _, board = committed
    assert board["schema_version"] == 2 and board["suite_version"] == "1"
    stored = {tuple(u[:6]): (u[6], u[7]) for u in board["units"]}
    assert len(stored) == len(records)
    for rec in records.to_dict("records"):
        status, value = stored[record_key(rec)]
        assert status == rec["status"] and (value == rec["auc"] or (value is None and rec["auc"] != rec["auc"]))
