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


# ---- the default suite's committed board and its validity document ----------------------------------------------


@pytest.fixture(scope="module")
def relations_committed():
    records, run_doc = read_run(BOARDS / "relations")
    return records, run_doc, json.loads((BOARDS / "relations.json").read_text())


def test_relations_board_reproduces_and_covers_every_method_and_unit(relations_committed):
    from cafe_bench.suites import load_suite
    from cafe_bench.validity import board_validity, board_validity_text

    records, run_doc, board = relations_committed
    summary = summarize(records, **board["statistics"])
    pd.testing.assert_frame_equal(
        summary.reset_index(drop=True), pd.DataFrame(board["rows"])[summary.columns], check_dtype=False
    )
    validity_lines = board_validity_text([BOARDS / "relations"], hint=False)
    assert "normalised AUC" in validity_lines and "⚠ maps barely change" in validity_lines
    assert (BOARDS / "relations.md").read_text() == render(summary, "md", by="method") + validity_lines
    assert board["validity"] == board_validity([BOARDS / "relations"])
    suite = load_suite("relations")
    assert run_doc["config"]["suite_files"] == suite.hashes
    assert set(records["method"]) == set(cafe_bench.runner.DEFAULT_METHODS)
    assert len(records) == len(suite.units()) * len(cafe_bench.runner.DEFAULT_METHODS) * 2


def test_relations_records_match_a_fresh_run_of_the_fast_methods(relations_committed):
    records, _, _ = relations_committed
    methods = ["activation", "gradient", "random", "smoothgrad"]
    fresh = cafe_bench.run(methods=methods, layers=[5], progress=False)  # the default suite
    stored = {record_key(r): r for r in records.to_dict("records")}
    assert len(fresh) == 24 * len(methods) * 2
    for rec in fresh.to_dict("records"):
        old = stored[record_key(rec)]
        assert rec["curve"] == pytest.approx(old["curve"], rel=1e-6, abs=1e-9)


def test_committed_validity_reproduces_from_the_stored_records(relations_committed):
    from cafe_bench.validity import _finite, validity

    committed = json.loads((BOARDS / "relations" / "validity.json").read_text())
    fresh = json.loads(
        json.dumps(_finite(validity(BOARDS / "relations", sanity_units=0, n_resamples=100, progress=False)))
    )
    assert fresh["nonlocality_check"] == committed["nonlocality_check"]
    assert fresh["unit_nonlocality"] == committed["unit_nonlocality"]
    for layer, entry in committed["layers"].items():
        got = fresh["layers"][layer]
        for key in ("nonlocal_fraction", "early_share", "gt_agreement", "kendall_tau", "oracle_auc"):
            assert got[key] == entry[key], (layer, key)
        for protocol, methods in entry["normalised_auc"].items():
            for method, value in methods.items():  # the estimate; the CIs depend on the replicates
                assert got["normalised_auc"][protocol][method]["mean"] == value["mean"]
    # the sanity check is not recomputed here (sanity_units=0); the committed one covers every method, and its
    # control is flagged
    for entry in committed["layers"].values():
        assert set(entry["sanity"]) == set(committed["methods"]) and entry["sanity"]["random"]["flagged"] is True


def test_normalised_auc_is_the_ratio_of_mean_aucs_to_random_and_oracle(relations_committed):
    """Recomputed here from the records and the reference's oracle values, without cafe_bench.validity."""
    import numpy as np

    from cafe_bench.stats import auc
    from cafe_bench.suites import load_suite

    records, _, _ = relations_committed
    committed = json.loads((BOARDS / "relations" / "validity.json").read_text())
    reference = {
        (u["layer"], u["feature"], u["image_id"], u["token"]): u for u in load_suite("relations").reference["units"]
    }
    layer, protocol, method = 5, "insertion", "attnlrp"
    rows = records[(records["layer"] == layer) & (records["protocol"] == protocol)]
    keys = ["layer", "feature", "image_id", "token"]

    def mean_auc(name):
        return rows[rows["method"] == name]["auc"].mean()

    oracle = []
    for key, group in rows.groupby(keys):
        entry = reference[tuple(int(k) for k in key)]
        counts = [round(f * 64) for f in group["fractions"].iloc[0]]
        curve = np.asarray(entry["oracle"][protocol]["values"])[counts] / entry["clean"]
        oracle.append(auc(group["fractions"].iloc[0], curve))
    expected = (mean_auc(method) - mean_auc("random")) / (np.mean(oracle) - mean_auc("random"))
    got = committed["layers"][str(layer)]["normalised_auc"][protocol][method]
    assert got["mean"] == pytest.approx(expected, rel=1e-9)
    assert got["ci_low"] < got["mean"] < got["ci_high"]
    assert committed["layers"][str(layer)]["oracle_auc"][protocol] == pytest.approx(np.mean(oracle), rel=1e-9)


def test_the_default_suite_meets_its_discrimination_target(relations_committed):
    """At the deepest block: median early share at most 0.6 and fewer than half the units at 0.8 or more."""
    from cafe_bench.validity import early_share

    records, _, _ = relations_committed
    deepest = early_share(records[records["layer"] == records["layer"].max()])
    assert deepest["n_units"] >= 10
    assert deepest["median_share"] <= 0.6 and deepest["fraction_at_least_0.8"] < 0.5
    tiny = early_share(read_run(BOARDS / "tiny")[0].query("layer == 5"))
    assert tiny["median_share"] > 0.9  # the suite it replaces as default does not


def test_validity_notes_a_reduced_precision_run_against_the_fp32_reference(tmp_path):
    import shutil

    from cafe_bench.validity import validity

    run = tmp_path / "relations"
    shutil.copytree(BOARDS / "relations", run)
    doc = json.loads((run / "run.json").read_text())
    doc["config"]["precision"] = "bf16"
    (run / "run.json").write_text(json.dumps(doc))
    notes = validity(run, sanity_units=0, n_resamples=10, progress=False)["notes"]
    assert any("curves are bf16" in n and "0.05" in n for n in notes), notes
    assert not any(
        "bf16" in n for n in validity(BOARDS / "relations", sanity_units=0, n_resamples=10, progress=False)["notes"]
    )
