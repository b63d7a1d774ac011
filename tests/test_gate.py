"""The regression gate, proven by mutation: a real run of the tiny suite (the committed one) is changed the way
regressions happen, and ``cafe-bench compare`` must exit 1 (a regression) or 2 (not comparable); clean reruns
must pass."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cafe_bench
from cafe_bench.cli import main
from cafe_bench.compare import DEFAULT_TOLERANCE, gate, load_board
from cafe_bench.results import read_run
from cafe_bench.stats import auc
from cafe_bench.store import read_records

BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
RUN, BOARD = BOARDS / "tiny", BOARDS / "tiny.json"
FAST_METHODS = ["activation", "random", "gradient", "grad_x_input", "cp_lrp", "attnlrp", "occlusion"]


def compare(capsys, run_dir, *extra, board=BOARD):
    code = main(["compare", str(run_dir), "--board", str(board), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def mutated(tmp_path, change, name="mutant", config=None) -> Path:
    """A copy of the committed run whose records went through ``change`` (and run.json config through
    ``config``)."""
    dst = tmp_path / name
    shutil.copytree(RUN, dst)
    records = change(read_records(dst / "results.jsonl"))
    (dst / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    if config is not None:
        doc = json.loads((dst / "run.json").read_text())
        config(doc["config"])
        (dst / "run.json").write_text(json.dumps(doc))
    return dst


def fail(record, message="failed: attributor raised RuntimeError: boom"):
    return {**record, "status": message, "curve": None, "fractions": None, "auc": None, "scores_key": None}


def worsen(record, delta):
    """The record's curve moved by ``delta`` against its protocol's direction, its AUC recomputed."""
    shift = -delta if record["higher_is_better"] else delta
    curve = [c + shift for c in record["curve"]]
    return {**record, "curve": curve, "auc": auc(record["fractions"], curve)}


def select(method=None, layer=None, protocol=None):
    def match(r):
        return (
            r["status"] == "ok"
            and (method is None or r["method"] == method)
            and (layer is None or r["layer"] == layer)
            and (protocol is None or r["protocol"] == protocol)
        )

    return match


def findings(out: str, kind: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(kind.upper() + " ")]


# ---- non-mutations: must pass -------------------------------------------------------------------------------


def test_the_committed_run_passes_its_own_board(capsys):
    code, out, _ = compare(capsys, RUN)
    assert code == 0 and out.startswith("PASS: no regression")
    assert "60 method x layer x protocol rows" in out


def test_an_improvement_passes_the_one_sided_gate(tmp_path, capsys):
    better = mutated(tmp_path, lambda rs: [worsen(r, -0.05) if select("gradient")(r) else r for r in rs])
    assert compare(capsys, better)[0] == 0


def test_a_rerun_with_one_thread_passes(tmp_path, capsys):
    """Another thread count and ``--device auto`` (on this CPU-only machine it resolves to cpu)."""
    out = tmp_path / "threads1"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "cafe_bench.cli",
        "run",
        "tiny",
        "--methods",
        ",".join(FAST_METHODS),
        "--out",
        str(out),
    ]
    cmd += ["--device", "auto"]
    done = subprocess.run([*cmd, "--no-progress"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run.json").read_text())["provenance"]["torch_threads"] == 1
    code, text, _ = compare(capsys, out, "--methods", ",".join(FAST_METHODS))
    assert code == 0, text
    # and the per-unit differences it tolerated are within the stated tolerance
    fresh, board = read_run(out)[0], {tuple(u[:6]): u[7] for u in load_board(BOARD)["units"]}
    keys = ["layer", "feature", "image_id", "token", "method", "protocol"]
    diffs = [abs(r["auc"] - board[tuple(r[k] for k in keys)]) for r in fresh.to_dict("records") if r["status"] == "ok"]
    assert max(diffs) <= DEFAULT_TOLERANCE


# ---- mutations that must exit 1 -----------------------------------------------------------------------------


def test_a_method_that_raises_on_every_unit_fails_the_gate(tmp_path, capsys):
    code, out, _ = compare(
        capsys, mutated(tmp_path, lambda rs: [fail(r) if r["method"] == "cp_lrp" else r for r in rs])
    )
    assert code == 1
    assert len(findings(out, "failed")) == 6 and all("cp_lrp" in line for line in findings(out, "failed"))
    assert not findings(out, "regression")


def test_a_method_that_raises_on_one_unit_fails_the_gate(tmp_path, capsys):
    def one(records):
        i = next(i for i, r in enumerate(records) if select("occlusion", 5, "deletion")(r))
        return [fail(r) if j == i else r for j, r in enumerate(records)]

    code, out, _ = compare(capsys, mutated(tmp_path, one))
    assert code == 1 and findings(out, "failed") == [
        "FAILED occlusion layer 5 deletion: 1 record(s) failed; first: failed: attributor raised RuntimeError: boom"
    ]


@pytest.mark.parametrize("delta", [0.02, 0.05, 0.2])
@pytest.mark.parametrize("protocol", ["insertion", "deletion"])
def test_curves_worsened_on_one_layer_fail_the_gate(tmp_path, capsys, delta, protocol):
    pick = select("cp_lrp", 3, protocol)
    code, out, _ = compare(capsys, mutated(tmp_path, lambda rs: [worsen(r, delta) if pick(r) else r for r in rs]))
    assert code == 1
    [line] = findings(out, "regression")
    assert line.startswith(f"REGRESSION cp_lrp layer 3 {protocol}: mean AUC worse by {delta:.4g} over 32 paired")


def test_every_row_catches_a_worsening_just_above_the_tolerance():
    records, doc = read_run(RUN)
    board = load_board(BOARD)
    delta = 2 * DEFAULT_TOLERANCE
    rows = records[["method", "layer", "protocol"]].drop_duplicates().to_dict("records")
    assert len(rows) == 60
    for row in rows:
        pick = select(row["method"], row["layer"], row["protocol"])
        changed = records.apply(lambda r, p=pick: worsen(dict(r), delta) if p(dict(r)) else dict(r), axis=1)
        result = gate(type(records)(list(changed)), doc["config"], board)
        assert [(f.kind, f.method, f.layer, f.protocol) for f in result.findings] == [
            ("regression", row["method"], row["layer"], row["protocol"])
        ]


def test_a_dropped_unit_fails_the_gate(tmp_path, capsys):
    code, out, _ = compare(capsys, mutated(tmp_path, lambda rs: rs[:7] + rs[8:]))
    assert code == 1 and len(findings(out, "missing")) == 1 and "1 unit(s) of the board not in the run" in out


def test_an_added_unit_and_a_changed_status_fail_the_gate(tmp_path, capsys):
    def add(records):
        extra = {**records[0], "token": (records[0]["token"] + 1) % 64}
        return [*records, extra]

    code, out, _ = compare(capsys, mutated(tmp_path, add, "added"))
    assert code == 1 and "1 unit(s) in the run but not on the board" in out
    dead = "skipped: dead feature (z_k of the clean image is 0)"
    code, out, _ = compare(capsys, mutated(tmp_path, lambda rs: [fail(rs[0], dead), *rs[1:]], "dead"))
    assert code == 1 and len(findings(out, "status")) == 1


def test_a_plugin_whose_next_release_is_slightly_worse_fails_the_gate(tmp_path, capsys, monkeypatch):
    import torch

    from cafe_bench.attributors.gradient import input_gradient
    from cafe_bench.attributors.registry import _REGISTRY, register_attributor

    class Blended(cafe_bench.Attributor):
        """|gradient| blended with seeded noise: release 1.0 has none, release 1.1 a little."""

        needs_grad = True
        version = "1.0"
        noise = 0.0

        def attribute(self, target):
            grad = target.pool(input_gradient(target).abs())  # (B, gh, gw)
            scale = grad.flatten(1).std(1)[:, None, None]
            draws = [torch.randn(*target.grid, generator=torch.Generator().manual_seed(s)) for s in target.seeds]
            return grad + self.noise * scale * torch.stack(draws).to(grad)

    register_attributor("blended_test")(Blended)
    monkeypatch.setitem(_REGISTRY, "blended_test", Blended)
    try:
        kwargs = {"methods": ["blended_test"], "layers": [1, 5], "progress": False}
        cafe_bench.run("tiny", out=tmp_path / "v1", **kwargs)
        assert main(["leaderboard", str(tmp_path / "v1"), "--save", str(tmp_path / "board")]) == 0
        monkeypatch.setattr(Blended, "version", "1.1")
        monkeypatch.setattr(Blended, "noise", 0.25)
        cafe_bench.run("tiny", out=tmp_path / "v2", **kwargs)
        assert set(read_run(tmp_path / "v2")[0]["method_version"]) == {"1.1"}
        capsys.readouterr()
        code, out, err = compare(capsys, tmp_path / "v2", board=tmp_path / "board.json")
        assert code == 1, err  # compared, not refused: a new release is not a new identity
        assert findings(out, "regression")
        monkeypatch.setattr(Blended, "version", "1.2")
        monkeypatch.setattr(Blended, "noise", 0.0)  # the next release is back to 1.0's maps: passes
        cafe_bench.run("tiny", out=tmp_path / "v3", **kwargs)
        assert compare(capsys, tmp_path / "v3", board=tmp_path / "board.json")[0] == 0
    finally:
        _REGISTRY.pop("blended_test", None)


# ---- mutations that must exit 2: not comparable -------------------------------------------------------------


def test_a_changed_seed_is_not_comparable_for_seeded_methods(tmp_path, capsys):
    out = tmp_path / "seed1"
    cafe_bench.run("tiny", out=out, seed=1, methods=["activation", "random"], progress=False)
    code, _, err = compare(capsys, out, "--methods", "activation,random")
    assert code == 2 and "not comparable: seed 1 vs 0 (seeded methods: random)" in err and err.count("\n") == 1
    # a deterministic method does not depend on the seed: its rerun under another seed is compared (and passes)
    code, text, _ = compare(capsys, out, "--methods", "activation")
    assert code == 0, text


def test_a_different_feature_set_is_not_comparable(tmp_path, capsys, suite):
    from cafe_bench.target import Unit

    other_units = [Unit(u.layer, u.feature, u.image_id, (u.token + 1) % 64) for u in suite.units([1])[:4]]
    out = tmp_path / "other_units"
    cafe_bench.run("tiny", out=out, methods=["activation"], units=other_units, progress=False)
    code, _, err = compare(capsys, out)
    assert code == 2 and "explicit unit lists differ" in err
    changed = mutated(tmp_path, list, "features", config=lambda c: c["suite_files"].update({"features.json": "0" * 64}))
    code, _, err = compare(capsys, changed)
    assert code == 2 and "not comparable: feature set features.json differs" in err


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(suite_version="2"), 'not comparable: suite version "2" vs "1"'),
        (lambda c: c.update(steps=8), "not comparable: steps 8 vs 16"),
        (lambda c: c.update(baseline="zero"), 'not comparable: baseline "zero" vs "blur"'),
        (lambda c: c["suite_files"].update({"vit.safetensors": "1" * 64}), "weights vit.safetensors differs"),
        (
            lambda c: c["method_params"]["integrated_gradients"].update(n_steps=64),
            "not comparable: parameters of integrated_gradients",
        ),
    ],
)
def test_what_changes_the_numbers_is_not_comparable(tmp_path, capsys, edit, message):
    code, _, err = compare(capsys, mutated(tmp_path, list, config=edit))
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_batch_size_is_not_part_of_the_identity(tmp_path, capsys):
    edit = lambda c: c["method_params"]["occlusion"].update(batch_size=7)  # noqa: E731
    assert compare(capsys, mutated(tmp_path, list, config=edit))[0] == 0


# ---- the command line -------------------------------------------------------------------------------------


def test_baseline_is_a_deprecated_alias_of_board(capsys):
    assert main(["compare", str(RUN), "--baseline", str(BOARD)]) == 0
    assert "--baseline is deprecated; use --board" in capsys.readouterr().err
    assert main(["compare", str(RUN), "--baseline", str(BOARD), "--board", str(BOARD)]) == 2
    assert main(["compare", str(RUN)]) == 2
    assert "--board BOARD is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rule", "abs"], "unknown --rule 'abs'; valid: paired, unit, ci"),
        (["--tolerance", "-1"], "tolerance must be a finite number >= 0"),
        (["--floor", "nan"], "floor must be a finite number >= 0"),
        (["--methods", "nope"], "method 'nope' is not on the board; valid: activation"),
    ],
)
def test_gate_mistakes_exit_2_with_one_line(capsys, extra, message):
    code, _, err = compare(capsys, RUN, *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_an_old_or_broken_board_exits_2(tmp_path, capsys):
    board = json.loads(BOARD.read_text())
    old = {k: v for k, v in board.items() if k not in ("units", "unit_fields")} | {"schema_version": 1}
    (tmp_path / "old.json").write_text(json.dumps(old))
    code, _, err = compare(capsys, RUN, board=tmp_path / "old.json")
    assert code == 2 and "without per-unit AUCs; regenerate it" in err
    del board["rows"][1]["layer"]
    (tmp_path / "bad.json").write_text(json.dumps(board))
    code, _, err = compare(capsys, RUN, board=tmp_path / "bad.json")
    assert code == 2 and "row 2 lacks one of" in err
    assert compare(capsys, RUN, board=tmp_path / "none.json")[0] == 2


def test_the_unit_rule_fails_on_one_worse_unit_the_paired_mean_tolerates(tmp_path, capsys):
    def mixed(records):
        picks = [i for i, r in enumerate(records) if select("gradient", 1, "insertion")(r)]
        out = list(records)
        out[picks[0]] = worsen(out[picks[0]], 0.01)  # one unit worse by 0.01
        out[picks[1]] = worsen(out[picks[1]], -0.01)  # another better by as much: the mean is unchanged
        return out

    run = mutated(tmp_path, mixed)
    assert compare(capsys, run)[0] == 0
    code, out, _ = compare(capsys, run, "--rule", "unit")
    assert code == 1 and "1 unit(s) worse, the worst by 0.01" in out


def test_the_ci_rule_compares_means_with_the_board_ci(tmp_path, capsys):
    pick = select("gradient", 5, "insertion")
    far = mutated(tmp_path, lambda rs: [worsen(r, 0.5) if pick(r) else r for r in rs])
    code, out, _ = compare(capsys, far, "--rule", "ci")
    assert code == 1 and findings(out, "regression")[0].startswith("REGRESSION gradient layer 5 insertion: mean AUC")
    near = mutated(tmp_path, lambda rs: [worsen(r, 0.03) if pick(r) else r for r in rs], "near")
    assert compare(capsys, near, "--rule", "ci")[0] == 0  # inside the between-feature CI: the ci rule misses it
    assert compare(capsys, near)[0] == 1  # the paired rule does not


def test_a_method_dropped_from_the_run_is_missing_not_incomparable(tmp_path, capsys):
    dropped = mutated(tmp_path, lambda rs: [r for r in rs if r["method"] != "integrated_gradients"])
    code, out, err = compare(capsys, dropped)
    assert code == 1, err
    assert findings(out, "missing") == ["MISSING integrated_gradients: method on the board but not in the run"]
    assert compare(capsys, dropped, "--methods", "activation,gradient")[0] == 0


def test_the_ci_rule_relaxes_the_feature_set_but_not_the_model(tmp_path, capsys):
    features = mutated(tmp_path, list, "f", config=lambda c: c["suite_files"].update({"features.json": "0" * 64}))
    assert compare(capsys, features, "--rule", "ci")[0] == 0  # another feature set: what the ci rule is for
    for name, edit, message in [
        ("w", lambda c: c["suite_files"].update({"sae_layer3.safetensors": "2" * 64}), "weights sae_layer3"),
        ("v", lambda c: c.update(suite_version="2"), 'suite version "2" vs "1"'),
    ]:
        code, _, err = compare(capsys, mutated(tmp_path, list, name, config=edit), "--rule", "ci")
        assert code == 2 and message in err
    failed = mutated(tmp_path, lambda rs: [fail(rs[0]), *rs[1:]], "failed")
    code, out, _ = compare(capsys, failed, "--rule", "ci")
    assert code == 1 and len(findings(out, "failed")) == 1


def test_a_real_raising_method_fails_run_and_gate_and_its_fix_passes(tmp_path, capsys, monkeypatch):
    from cafe_bench.attributors.gradient import GradientAttributor

    out = tmp_path / "run"
    argv = ["run", "tiny", "--methods", "activation,gradient", "--out", str(out), "--no-progress"]
    monkeypatch.setattr(GradientAttributor, "attribute", lambda self, t: 1 / 0)
    assert main(argv) == 1  # every other method's records are written first
    capsys.readouterr()
    code, text, _ = compare(capsys, out, "--methods", "activation,gradient")
    assert code == 1
    assert len(findings(text, "failed")) == 6 and not findings(text, "regression") + findings(text, "missing")
    assert main(["leaderboard", str(out), "--save", str(tmp_path / "board")]) == 2  # no board from failures
    assert "192 failed record(s) (gradient)" in capsys.readouterr().err and not (tmp_path / "board.json").exists()
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0  # the fix: the failed records are retried
    capsys.readouterr()
    code, text, _ = compare(capsys, out, "--methods", "activation,gradient")
    assert code == 0, text


def test_a_board_is_never_saved_from_a_failed_or_unfinished_run(tmp_path, capsys):
    failed = mutated(tmp_path, lambda rs: [fail(rs[0]), *rs[1:]], "failed")
    assert main(["leaderboard", str(failed), "--save", str(tmp_path / "b1")]) == 2
    err = capsys.readouterr().err
    assert "1 failed record(s) (activation); a board must not hold failures" in err and err.count("\n") == 1
    unfinished = mutated(tmp_path, list, "unfinished")
    doc = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**doc, "status": "running"}))
    assert main(["leaderboard", str(unfinished), "--save", str(tmp_path / "b2")]) == 2
    assert "the run is 'running', not finished" in capsys.readouterr().err
    assert not list(tmp_path.glob("b*.json")) and not list(tmp_path.glob("b*.md"))
    assert main(["leaderboard", str(unfinished), "--n-resamples", "20"]) == 0  # shown, just not saved
