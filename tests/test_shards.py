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


def _pid_of_rank(tag: str, rank: int) -> int | None:
    """The process started by torchrun for ``rank`` of the job whose environment carries ``tag`` (Linux /proc)."""
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"CAFE_BENCH_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            if b"TORCHELASTIC_RUN_ID" in b"\0".join(env) and f"LOCAL_RANK={rank}".encode() in env:
                return int(entry.name)
    return None


def test_a_torchrun_job_with_a_killed_rank_resumes_to_the_uninterrupted_result(tmp_path, suite):
    """Two gloo ranks on the CPU; rank 1 is killed after its first stored batch; the same command with --resume
    finishes, and the merged records equal a single-process run's: nothing lost, nothing counted twice."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    methods = ["activation", "random", "smoothgrad", "kernel_shap"]
    out, tag = tmp_path / "torchrun", uuid.uuid4().hex
    env = {**os.environ, "CAFE_BENCH_TEST_TAG": tag, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cafe_bench", "run", "tiny"]
    cmd += ["--methods", ",".join(methods), "--layers", "1,3", "--out", str(out), "--no-progress"]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard1 = shard_dir(out, 1, 2) / "results.jsonl"
    deadline = time.monotonic() + 240
    while not (shard1.is_file() and shard1.read_bytes().count(b"\n") >= 1):
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "rank 1 stored nothing in time"
        time.sleep(0.05)
    pid = _pid_of_rank(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert job.wait(timeout=120) != 0
    assert json.loads((shard_dir(out, 1, 2) / "run.json").read_text())["status"] == "running"  # really cut short
    assert not (out / "results.jsonl").exists()
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    merged = {record_key(r): r for r in read_run(out)[0].to_dict("records")}
    single = cafe_bench.run(suite, methods=methods, layers=[1, 3], progress=False)
    assert set(merged) == {record_key(r) for r in single.to_dict("records")}
    assert len(read_run(out)[0]) == len(single)
    for rec in single.to_dict("records"):
        assert merged[record_key(rec)]["auc"] == pytest.approx(rec["auc"], abs=1e-5)


def test_a_torchrun_rank_refuses_a_second_split_or_no_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    argv = ["run", "tiny", "--methods", "activation", "--layers", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--shard", "0/2"]) == 2
    assert "--shard and torchrun both split the run" in capsys.readouterr().err
    assert main(argv) == 2
    assert "a torchrun run needs --out" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
