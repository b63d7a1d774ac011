"""`cafe-bench baselines --suite`: one run per baseline, ROAD included, then the ranking agreement."""

import json

from cafe_bench.cli import main


def test_baselines_runs_each_baseline_then_compares_and_resumes(tmp_path, capsys):
    args = [
        "baselines",
        "--suite",
        "tiny",
        "--out",
        str(tmp_path),
        "--baselines",
        "blur,road",
        "--methods",
        "activation,random,gradient",
        "--layers",
        "1",
        "--units-per-layer",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| insertion  | blur         | road         |           3 |" in printed
    for name in ("blur", "road"):
        config = json.loads((tmp_path / name / "run.json").read_text())["config"]
        assert config["baseline"] == name and len(config["units"]) == 2
    lines = (tmp_path / "road" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 * 2  # units x methods x protocols
    assert main(args) == 0  # a rerun resumes: nothing is run or stored twice
    assert (tmp_path / "road" / "results.jsonl").read_text().splitlines() == lines


def test_baselines_refuses_incomplete_requests(tmp_path, capsys):
    assert main(["baselines", "--suite", "tiny"]) == 2
    assert "--suite needs --out" in capsys.readouterr().err
    assert main(["baselines"]) == 2
    assert "give run directories" in capsys.readouterr().err
    assert main(["baselines", "--suite", "tiny", "--out", str(tmp_path), "--baselines", "blur,grey"]) == 2
    assert "valid: blur, mean, road, zero" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
