import json
import math

import pandas as pd
import pytest

import cafe_bench
from cafe_bench.errors import RunConfigError
from cafe_bench.store import read_records, record_key

FAST = {"methods": ["activation", "random"], "layers": [1], "progress": False}


def test_same_seed_gives_an_identical_results_file(tmp_path):
    cafe_bench.run("tiny", out=tmp_path / "a", seed=3, **FAST)
    cafe_bench.run("tiny", out=tmp_path / "b", seed=3, **FAST)
    cafe_bench.run("tiny", out=tmp_path / "c", seed=4, **FAST)
    a = (tmp_path / "a" / "results.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "results.jsonl").read_bytes()
    assert a != (tmp_path / "c" / "results.jsonl").read_bytes()  # the random control moved
    scores = (tmp_path / "a" / "scores.npz").read_bytes()
    assert scores == (tmp_path / "b" / "scores.npz").read_bytes()  # the patch scores too, byte for byte
    assert scores != (tmp_path / "c" / "scores.npz").read_bytes()


def test_records_carry_the_documented_fields_and_reproduce_their_auc(tmp_path, suite):
    df = cafe_bench.run("tiny", out=tmp_path, **FAST)
    assert len(df) == len(suite.units([1])) * 2 * 2
    required = {
        "suite",
        "layer",
        "feature",
        "image_id",
        "token",
        "method",
        "protocol",
        "baseline",
        "fractions",
        "curve",
        "auc",
        "clean_activation",
        "status",
    }
    assert required <= set(df.columns)
    for row in df[df.status == "ok"].itertuples():
        f, c = row.fractions, row.curve
        assert len(c) == row.steps + 1 and f[0] == 0 and f[-1] == 1
        trapezoid = sum((f[i + 1] - f[i]) * (c[i] + c[i + 1]) / 2 for i in range(len(f) - 1))
        assert row.auc == pytest.approx(trapezoid, rel=1e-12, abs=1e-12)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["config"]["suite_files"] == suite.hashes
    assert run["provenance"]["libraries"]["torch"]
    assert {"cafe_bench_version", "git_commit", "device", "torch_threads"} <= set(run["provenance"])


def test_insertion_of_a_causal_ranking_beats_random(tmp_path):
    df = cafe_bench.run("tiny", methods=["activation", "random"], protocols=["insertion"], progress=False)
    means = df.groupby("method")["auc"].mean()
    assert means["activation"] > means["random"]


def test_killed_run_resumes_without_losing_finished_work(tmp_path):
    full = cafe_bench.run("tiny", out=tmp_path / "full", **FAST)
    out = tmp_path / "killed"
    cafe_bench.run("tiny", out=out, **FAST)
    path = out / "results.jsonl"
    lines = path.read_bytes().split(b"\n")
    kept = lines[:10]
    path.write_bytes(b"\n".join(kept) + b"\n" + lines[10][:25])  # a batch cut mid-line
    with pytest.warns(UserWarning, match="partially written last line"):
        resumed = cafe_bench.run("tiny", out=out, resume=True, **FAST)
    assert len(resumed) == len(full)
    stored = read_records(path)
    assert [json.dumps(r, sort_keys=True) for r in stored[:10]] == [line.decode() for line in kept]
    assert len({record_key(r) for r in stored}) == len(stored)
    by_key = {record_key(r): r for r in read_records(tmp_path / "full" / "results.jsonl")}
    for rec in stored:
        assert rec["auc"] == pytest.approx(by_key[record_key(rec)]["auc"], rel=1e-6)


def test_resume_of_a_finished_run_computes_nothing(tmp_path, monkeypatch):
    cafe_bench.run("tiny", out=tmp_path, **FAST)
    before = (tmp_path / "results.jsonl").read_bytes()
    import cafe_bench.runner as runner

    monkeypatch.setattr(runner, "run_curves", lambda *a, **k: pytest.fail("recomputed a finished curve"))
    cafe_bench.run("tiny", out=tmp_path, resume=True, **FAST)
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_a_different_config_is_refused_and_nothing_is_written(tmp_path):
    cafe_bench.run("tiny", out=tmp_path, **FAST)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for kwargs in [{"baseline": "zero"}, {"seed": 9}, {}]:
        with pytest.raises(RunConfigError):
            cafe_bench.run("tiny", out=tmp_path, **{**FAST, **kwargs})
    with pytest.raises(RunConfigError, match="different config"):
        cafe_bench.run("tiny", out=tmp_path, resume=True, **{**FAST, "baseline": "zero"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_dead_unit_is_skipped_with_a_reason_not_divided_by_zero(tmp_path, suite, dead_unit):
    live = suite.units([dead_unit.layer])[0]
    df = cafe_bench.run("tiny", methods=["activation"], units=[live, dead_unit], progress=False)
    dead = df[df["token"] == dead_unit.token]
    assert (dead["status"].str.contains("dead feature")).all()
    assert dead["auc"].isna().all() and (dead["clean_activation"] == 0).all()
    ok = df[df["token"] == live.token]
    assert (ok["status"] == "ok").all() and ok["auc"].map(math.isfinite).all()


def test_baselines_change_the_numbers(tmp_path):
    kwargs = {**FAST, "methods": ["activation"], "protocols": ["deletion"]}
    blur = cafe_bench.run("tiny", **kwargs)
    zero = cafe_bench.run("tiny", baseline="zero", **kwargs)
    assert not blur["auc"].equals(zero["auc"])
    assert (zero["baseline"] == "zero").all()


def test_failing_method_is_recorded_and_others_continue(monkeypatch):
    from cafe_bench.attributors.gradient import GradientAttributor

    monkeypatch.setattr(GradientAttributor, "attribute", lambda self, t: 1 / 0)
    df = cafe_bench.run("tiny", methods=["gradient", "activation"], layers=[1], protocols=["insertion"], progress=False)
    assert df[df["method"] == "gradient"]["status"].str.startswith("failed: attributor 'gradient' raised").all()
    assert (df[df["method"] == "activation"]["status"] == "ok").all()


def test_summary_has_one_row_per_method_layer_protocol(tmp_path):
    df = cafe_bench.run("tiny", **FAST)
    summary = cafe_bench.summarize(df, n_resamples=200)
    assert len(summary) == 2 * 1 * 2
    assert (summary["ci_low"] < summary["ci_high"]).all()
    row = summary[(summary.method == "random") & (summary.protocol == "deletion")].iloc[0]
    group = df[(df.method == "random") & (df.protocol == "deletion")]
    assert row["mean"] == pytest.approx(group["auc"].mean()) and row["n_units"] == len(group) == 32
    # the CI depends on which units share a feature, not on the feature's label
    relabelled = df.assign(feature=df["feature"].map(lambda f: 10_000 - f))
    again = cafe_bench.summarize(relabelled, n_resamples=200)
    again = again[(again.method == "random") & (again.protocol == "deletion")].iloc[0]
    assert (again["ci_low"], again["ci_high"]) == pytest.approx((row["ci_low"], row["ci_high"]))
    # and it is clustered: treating every unit as its own feature narrows it
    unclustered = cafe_bench.summarize(df.assign(feature=range(len(df))), n_resamples=200)
    unclustered = unclustered[(unclustered.method == "random") & (unclustered.protocol == "deletion")].iloc[0]
    assert unclustered["ci_high"] - unclustered["ci_low"] != pytest.approx(row["ci_high"] - row["ci_low"])
    assert isinstance(summary, pd.DataFrame)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": []}, "no methods given"),
        ({"protocols": []}, "no protocols given"),
        ({"seed": -1}, "non-negative"),
        ({"resume": True}, "--resume needs --out"),
    ],
)
def test_empty_or_bad_choices_are_refused_before_anything_runs(kwargs, message, tmp_path):
    with pytest.raises(RunConfigError, match=message):
        cafe_bench.run("tiny", **{**FAST, **kwargs})


def test_repeated_choices_count_once(tmp_path):
    df = cafe_bench.run(
        "tiny",
        methods=["activation", "activation"],
        protocols=["insertion", "insertion"],
        layers=[1, 1],
        progress=False,
    )
    assert len(df) == 32


def test_units_outside_the_suite_are_refused(suite):
    from cafe_bench.errors import UnknownNameError
    from cafe_bench.target import Unit

    with pytest.raises(UnknownNameError, match="no SAE at layer 2"):
        cafe_bench.run("tiny", units=[Unit(2, 0, 0, 0)], **FAST)


def test_failed_records_are_retried_on_resume(tmp_path, monkeypatch):
    from cafe_bench.attributors.gradient import GradientAttributor

    kwargs = {"methods": ["gradient"], "layers": [1], "protocols": ["insertion"], "progress": False}
    original = GradientAttributor.attribute
    monkeypatch.setattr(GradientAttributor, "attribute", lambda self, t: 1 / 0)
    failed = cafe_bench.run("tiny", out=tmp_path, **kwargs)
    assert failed["status"].str.startswith("failed").all()
    monkeypatch.setattr(GradientAttributor, "attribute", original)
    resumed = cafe_bench.run("tiny", out=tmp_path, resume=True, **kwargs)
    assert len(resumed) == 32 and (resumed["status"] == "ok").all()
    run = json.loads((tmp_path / "run.json").read_text())
    assert len(run["previous_sessions"]) == 1


def test_damaged_store_is_refused_before_anything_is_written(tmp_path):
    cafe_bench.run("tiny", out=tmp_path, **FAST)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "{broken\n"
    path.write_text("".join(lines))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RunConfigError, match="results.jsonl:3"):
        cafe_bench.run("tiny", out=tmp_path, resume=True, **FAST)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(RunConfigError, match="cannot write|is a file"):
        cafe_bench.run("tiny", out=path / "sub", **FAST)


def test_records_follow_the_schema_and_carry_method_parameters_and_version(tmp_path):
    from cafe_bench import __version__
    from cafe_bench.schema import RECORD_FIELDS, SCHEMA_VERSION

    df = cafe_bench.run("tiny", out=tmp_path, method_args={"random": {}}, **FAST)
    assert set(df.columns) == set(RECORD_FIELDS)
    assert (df["schema_version"] == SCHEMA_VERSION).all() and (df["suite_version"] == "1").all()
    assert (df["method_version"] == __version__).all()
    assert (df["method_source"] == f"cafe-bench {__version__} (built-in)").all()
    assert df.groupby("protocol")["higher_is_better"].first().to_dict() == {"insertion": True, "deletion": False}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["method_sources"]["random"]["deterministic"] is False
    assert run["config"]["suite_version"] == "1" and run["schema_version"] == SCHEMA_VERSION


def test_a_curve_is_rederived_from_the_stored_patch_scores(tmp_path, suite):
    import numpy as np
    import torch

    from cafe_bench.protocols.engine import normalised, run_curves
    from cafe_bench.store import read_scores
    from cafe_bench.target import Unit

    df = cafe_bench.run("tiny", out=tmp_path, methods=["gradient"], layers=[3], progress=False)
    assert not (tmp_path / "scores").exists()  # the parts were merged into scores.npz
    scores = read_scores(tmp_path)
    assert len(scores) == len(suite.units([3])) and all(v.dtype == np.float32 for v in scores.values())
    rec = df[(df.protocol == "deletion") & (df.status == "ok")].iloc[5]
    unit = Unit(int(rec.layer), int(rec.feature), int(rec.image_id), int(rec.token))
    target = suite.target([unit])
    stored = torch.from_numpy(scores[rec.scores_key])[None]
    curves = run_curves(target, stored, "deletion", int(rec.steps))
    curve = normalised(curves, target.clean.numpy())[0]
    np.testing.assert_allclose(curve, rec.curve, rtol=1e-6, atol=1e-7)
    f = curves.fractions
    trapezoid = sum((f[i + 1] - f[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(len(f) - 1))
    assert trapezoid == pytest.approx(rec.auc, rel=1e-6)
    # and the stored map is the method's map of that unit, in float32
    fresh = cafe_bench.get_attributor("gradient").scores(target)[0].numpy()
    np.testing.assert_array_equal(scores[rec.scores_key], fresh)


def test_method_args_reach_the_method_and_are_recorded(tmp_path, suite):
    import numpy as np

    from cafe_bench.store import read_scores

    units = suite.units([1])[:2]
    df = cafe_bench.run(
        "tiny",
        out=tmp_path,
        methods=["integrated_gradients"],
        units=units,
        protocols=["insertion"],
        method_args={"integrated_gradients": {"n_steps": 4, "method": "riemann_trapezoid"}},
        progress=False,
    )
    params = df["method_params"].iloc[0]
    assert params == {"n_steps": 4, "method": "riemann_trapezoid", "batch_size": 64}
    config = json.loads((tmp_path / "run.json").read_text())["config"]
    assert config["method_params"]["integrated_gradients"] == params
    stored = read_scores(tmp_path)[df["scores_key"].iloc[0]]
    target = suite.target(units[:1])
    mine = cafe_bench.get_attributor("integrated_gradients", n_steps=4, method="riemann_trapezoid").scores(target)
    default = cafe_bench.get_attributor("integrated_gradients").scores(target)
    np.testing.assert_allclose(stored, mine[0].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(stored, default[0].numpy(), rtol=1e-3)


def test_run_exits_1_after_writing_everything_else_when_a_method_fails(tmp_path, monkeypatch, capsys):
    from cafe_bench.attributors.gradient import GradientAttributor
    from cafe_bench.cli import main

    monkeypatch.setattr(GradientAttributor, "attribute", lambda self, t: 1 / 0)
    out = tmp_path / "out"
    argv = ["run", "--methods", "activation,gradient", "--layers", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "some records failed (exit 1)" in err
    # the default suite (relations): 24 units on layer 1, two protocols
    assert "gradient: 48 failed record(s); first: failed: attributor 'gradient' raised ZeroDivisionError" in err
    records = read_records(out / "results.jsonl")
    assert len(records) == 96
    assert all(r["status"] == "ok" for r in records if r["method"] == "activation")
    assert json.loads((out / "run.json").read_text())["n_failed"] == 48
    assert main([*argv, "--resume"]) == 1  # still failing: retried, still exit 1
    capsys.readouterr()
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0  # fixed: retried and finished


def test_a_killed_scores_write_does_not_stop_the_resumed_run_from_finishing(tmp_path):
    from cafe_bench.store import read_scores

    cafe_bench.run("tiny", out=tmp_path, **FAST)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:20]))  # the run was killed ...
    parts = tmp_path / "scores"
    parts.mkdir()
    (parts / ".part-0.npz.123.abc.tmp").write_bytes(b"PK\x03")  # ... in the middle of writing a part
    resumed = cafe_bench.run("tiny", out=tmp_path, resume=True, **FAST)
    assert len(resumed) == 128 and not parts.exists()
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"
    assert set(read_scores(tmp_path)) == set(resumed["scores_key"])
