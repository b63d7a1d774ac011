"""validity.json, the board's validity section and --stratify locality, on runs of tiny (no frozen reference)."""

import json

import numpy as np
import pytest

import cafe_bench
from cafe_bench.cli import main
from cafe_bench.locality import nonlocality, occlusion_effects
from cafe_bench.validity import VALIDITY_FILE, read_validity, write_validity


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, suite):
    out = tmp_path_factory.mktemp("validity_run")
    units = suite.units([1])[:4] + suite.units([5])[:2]
    cafe_bench.run(suite, out=out, methods=["activation", "random"], units=units, progress=False)
    write_validity(out, suite=suite, sanity_units=2, progress=False)
    return out, units


def test_validity_of_a_suite_without_reference_has_locality_and_sanity_only(tiny_run, suite):
    out, units = tiny_run
    doc = read_validity(out)
    assert doc["notes"] == ["suite 'tiny' has no frozen reference: no ground truth or oracle"]
    assert doc["nonlocality_check"] is None
    assert set(doc["layers"]) == {"1", "5"}
    layer1 = doc["layers"]["1"]
    assert layer1["oracle_auc"] is None and layer1["kendall_tau"] is None and layer1["normalised_auc"] is None
    # the control's maps never depend on the model: flagged; sanity ran on 2 units of each layer
    assert layer1["sanity"]["random"]["flagged"] is True and layer1["sanity"]["random"]["n_units"] == 2
    # non-locality recomputed here from occlusion, independently of the stored verdicts
    target = suite.target(units[:4])
    scores = nonlocality(occlusion_effects(target), [u.token for u in units[:4]], target.grid)
    stored = {(u["layer"], u["feature"], u["image_id"], u["token"]): u["nonlocality"] for u in doc["unit_nonlocality"]}
    np.testing.assert_allclose([stored[u.key()] for u in units[:4]], scores, rtol=1e-6)
    assert layer1["nonlocal_fraction"] == pytest.approx(np.mean(scores > 0.5))


def test_validity_file_is_strict_json(tiny_run):
    text = (tiny_run[0] / VALIDITY_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_cli_validity_writes_the_file_and_prints_the_tables(tiny_run, tmp_path, capsys):
    out = tiny_run[0]
    (out / VALIDITY_FILE).rename(tmp_path / "kept.json")
    try:
        assert main(["validity", str(out), "--sanity-units", "0", "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert "non-local" in printed and "early share" in printed and "sanity check skipped" in printed
        assert read_validity(out)["sanity_units"] == 0
    finally:
        (tmp_path / "kept.json").replace(out / VALIDITY_FILE)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sanity-units", "-1"], "--sanity-units must be 0 or a positive integer"),
        (["--n-resamples", "0"], "--n-resamples must be a positive integer"),
    ],
)
def test_cli_validity_refuses_bad_arguments_without_writing(tiny_run, args, message, capsys):
    out = tiny_run[0]
    before = (out / VALIDITY_FILE).read_bytes()
    assert main(["validity", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert (out / VALIDITY_FILE).read_bytes() == before


def test_board_shows_sanity_flags_from_validity(tiny_run, capsys):
    assert main(["leaderboard", str(tiny_run[0]), "--n-resamples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "⚠ maps barely change" in printed  # random, the control, is flagged
    row = next(line for line in printed.splitlines() if line.startswith("| 1       | random"))
    assert "⚠" in row


def test_stratify_locality_splits_the_board_and_needs_validity(tiny_run, tmp_path, capsys):
    out = tiny_run[0]
    assert main(["leaderboard", str(out), "--stratify", "locality", "--n-resamples", "50"]) == 0
    printed = capsys.readouterr().out
    verdicts = [u["nonlocal"] for u in read_validity(out)["unit_nonlocality"]]
    assert sum(verdicts) < len(verdicts)  # the run has local units: the local board must be there
    assert f"\nlocal units ({len(verdicts) - sum(verdicts)}):" in printed
    assert ("non-local units (" in printed) == any(verdicts)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("results.jsonl", "run.json"):
        (bare / name).write_bytes((out / name).read_bytes())
    assert main(["leaderboard", str(bare), "--stratify", "locality"]) == 2
    assert "run `cafe-bench validity" in capsys.readouterr().err
    assert main(["leaderboard", str(out), "--stratify", "object"]) == 2
    assert "valid: locality" in capsys.readouterr().err
    assert main(["leaderboard", str(out), "--stratify", "locality", "--format", "csv"]) == 2
    assert "valid --format: md, got csv" in capsys.readouterr().err
    assert main(["leaderboard", str(out), "--stratify", "locality", "--save", str(tmp_path / "saved")]) == 2
    assert "cannot be combined" in capsys.readouterr().err and not list(tmp_path.glob("saved*"))


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_stratify_covers_dead_units_too(tmp_path, suite, dead_unit, capsys):
    out = tmp_path / "with_dead"
    units = [*suite.units([1])[:2], dead_unit]
    cafe_bench.run(suite, out=out, methods=["activation", "random"], units=units, progress=False)
    write_validity(out, suite=suite, sanity_units=0, progress=False)
    verdicts = {
        tuple(u[f] for f in ("layer", "feature", "image_id", "token")) for u in read_validity(out)["unit_nonlocality"]
    }
    assert dead_unit.key() in verdicts and len(verdicts) == 3
    assert main(["leaderboard", str(out), "--stratify", "locality", "--n-resamples", "20"]) == 0


def test_validity_refuses_a_suite_that_is_not_the_build_of_the_run(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run[0], tmp_path / "run")
    doc = json.loads((run / "run.json").read_text())
    doc["config"]["suite_files"]["vit.safetensors"] = "0" * 64
    (run / "run.json").write_text(json.dumps(doc))
    (run / VALIDITY_FILE).unlink()
    assert main(["validity", str(run), "--sanity-units", "0"]) == 2
    err = capsys.readouterr().err
    assert "not the build the run used (vit.safetensors differs)" in err and err.count("\n") == 1
    assert not (run / VALIDITY_FILE).exists()


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), (json.dumps({"layers": {"1": {}}}), "lacks 'methods'")],
)
def test_a_damaged_validity_file_is_a_one_line_error(tiny_run, tmp_path, capsys, content, message):
    run = _copy_run(tiny_run[0], tmp_path / "run")
    (run / VALIDITY_FILE).write_text(content)
    for argv in (["leaderboard", str(run)], ["leaderboard", str(run), "--stratify", "locality"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "rerun `cafe-bench validity" in err and err.count("\n") == 1


def test_cli_prints_an_undefined_precision_instead_of_crashing(tiny_run, tmp_path, capsys, monkeypatch):
    from cafe_bench import validity as module

    doc = read_validity(tiny_run[0])
    check = {"precision": float("nan"), "recall": 0.0, "tp": 0, "fp": 0, "fn": 3, "tn": 5}
    monkeypatch.setattr(module, "validity", lambda *a, **k: {**doc, "nonlocality_check": check})
    run = _copy_run(tiny_run[0], tmp_path / "run")
    assert main(["validity", str(run)]) == 0
    assert "precision undefined, recall 0.00" in capsys.readouterr().out


def test_ground_truth_agreement_without_stored_maps_is_empty_not_a_crash():
    """A run whose scores are gone (or whose units the reference lacks) has no agreement to report."""
    import pandas as pd

    from cafe_bench.validity import _gt_agreement

    ok = pd.DataFrame(
        [{"method": "gradient", "layer": 1, "feature": 2, "image_id": 3, "token": 4, "scores_key": "missing"}]
    )
    assert _gt_agreement(None, ok, scores={}, ref={}) == ({}, 0)
