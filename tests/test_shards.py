"""Sharded runs: a deterministic split of the units, shards that resume, and a merge equal to one process."""

import json

import numpy as np
import pytest

import cafe_bench
from cafe_bench.cli import main
from cafe_bench.errors import RunConfigError
from cafe_bench.results import read_run
from cafe_bench.schema import record_key
from cafe_bench.shards import merge_shards, parse_shard, shard_dir, shard_of
from cafe_bench.store import read_scores

METHODS = ["activation", "gradient", "random", "smoothgrad"]  # seeded ones too
RUN = dict(methods=METHODS, layers=[1, 3], progress=False)


def test_the_split_is_a_partition_fixed_by_the_unit_keys(suite):
    units = suite.units()
    for n in (1, 2, 3, 7):
        parts = [[u for u in units if shard_of(u, n) == i] for i in range(n)]
        assert sorted(u for p in parts for u in p) == sorted(units)
    sizes = [sum(shard_of(u, 2) == i for u in units) for i in range(2)]
    assert min(sizes) > len(units) // 4  # a hash split, not everything in one shard


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "a/b", "1", "1/2/3"])
def test_bad_shard_specs_are_refused(text):
    with pytest.raises(RunConfigError, match="--shard must be I/N"):
        parse_shard(text)


@pytest.fixture(scope="module")
def single_and_sharded(tmp_path_factory, suite):
    base = tmp_path_factory.mktemp("shards")
    single = base / "single"
    cafe_bench.run(suite, out=single, **RUN)
    sharded = base / "sharded"
    for i in range(3):
        cafe_bench.run(suite, out=sharded, shard=f"{i}/3", **RUN)
    merge_shards(sharded)
    return single, sharded


def test_merged_shards_equal_a_single_process_run(single_and_sharded):
    single, sharded = single_and_sharded
    one, one_doc = read_run(single)
    many, many_doc = read_run(sharded)
    assert many_doc["config"] == one_doc["config"] and "shard" not in many_doc["config"]
    a = {record_key(r): r for r in one.to_dict("records")}
    b = {record_key(r): r for r in many.to_dict("records")}
    assert set(a) == set(b) and len(b) == len(many)  # nothing lost, nothing counted twice
    for key, rec in a.items():
        other = b[key]
        assert rec["status"] == other["status"] and rec["seed"] == other["seed"]
        np.testing.assert_allclose(other["curve"], rec["curve"], atol=1e-5)
        assert other["auc"] == pytest.approx(rec["auc"], abs=1e-5)
    sa, sb = read_scores(single), read_scores(sharded)
    assert set(sa) == set(sb)
    for key in sa:
        np.testing.assert_allclose(sb[key], sa[key], atol=1e-5)
    assert [s["shard"] for s in many_doc["shards"]] == ["0/3", "1/3", "2/3"]
    assert many_doc["status"] == "finished"


def test_the_merged_board_is_the_single_runs(single_and_sharded, capsys):
    single, sharded = single_and_sharded
    assert main(["leaderboard", str(single), "--n-resamples", "50"]) == 0
    one = capsys.readouterr().out
    assert main(["leaderboard", str(sharded), "--n-resamples", "50"]) == 0
    assert capsys.readouterr().out.replace(str(sharded), "") == one.replace(str(single), "")


def test_merge_names_missing_and_unfinished_shards_and_resume_completes(tmp_path, suite, capsys):
    out = tmp_path / "run"
    cafe_bench.run(suite, out=out, shard="0/2", **RUN)
    assert main(["merge", str(out)]) == 2
    assert "missing shard(s) 1/2" in capsys.readouterr().err
    cafe_bench.run(suite, out=out, shard="1/2", **RUN)
    # shard 1 is killed mid-run: half its records and a status that never reached finished
    part = shard_dir(out, 1, 2)
    lines = (part / "results.jsonl").read_text().splitlines(keepends=True)
    (part / "results.jsonl").write_text("".join(lines[: len(lines) // 2]))
    doc = json.loads((part / "run.json").read_text())
    (part / "run.json").write_text(json.dumps({**doc, "status": "running"}))
    assert main(["merge", str(out)]) == 2
    assert "unfinished shard(s) 1/2 (continue them with --resume)" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()
    cafe_bench.run(suite, out=out, shard="1/2", resume=True, **RUN)  # does only what is missing
    assert len((part / "results.jsonl").read_text().splitlines()) == len(lines)
    assert main(["merge", str(out)]) == 0
    records, _ = read_run(out)
    assert len(records) == len(suite.units([1, 3])) * len(METHODS) * 2


def test_merge_refuses_shards_of_different_configs(tmp_path, suite, capsys):
    out = tmp_path / "run"
    cafe_bench.run(suite, out=out, shard="0/2", **RUN)
    cafe_bench.run(suite, out=out, shard="1/2", seed=1, **RUN)
    assert main(["merge", str(out)]) == 2
    assert "shard 1/2 differs from shard 0/2 in seed" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert "no shards under" in capsys.readouterr().err


def test_cli_shard_option(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["run", "tiny", "--methods", "activation", "--layers", "1", "--out", str(out), "--no-progress"]
    assert main([*argv, "--shard", "3/2"]) == 2
    assert "--shard must be I/N with 0 <= I < N, got 3/2" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--shard", "0/1"]) == 0
    assert f"{shard_dir(out, 0, 1)}/results.jsonl" in capsys.readouterr().err
    assert main(["merge", str(out)]) == 0
    assert len(read_run(out)[0]) == 32 * 2
