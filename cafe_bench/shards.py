"""Sharded runs: ``cafe-bench run --shard i/N`` runs one of N disjoint parts of a run, ``cafe-bench merge DIR``
joins the finished parts into one run directory.

A unit belongs to shard ``int(sha256(unit key)[:16], 16) % N``: a pure function of its (layer, feature, image,
token), so the split does not depend on the order of units, on the machine or on which shards run. Shard i of N
writes a complete run directory, ``DIR/shards/i-of-N/``, with the existing store (fsync'd appends, ``--resume``
does only what is missing, ``run.json``'s status ``finished`` marks it complete), so any scheduler (a Slurm
array, submitit, a shell loop) can run the shards. ``merge`` checks that all N shards are there, finished and of
the same config, and writes ``DIR/results.jsonl`` (records in a canonical order), ``DIR/scores.npz`` and
``DIR/run.json`` (the config without the shard, each shard's provenance and timings under ``shards``). The merged
records are those of a single-process run: AUCs equal up to the float noise of different batch compositions
(tested to 1e-5).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cafe_bench.errors import RunConfigError
from cafe_bench.files import append_fsync, write_json_atomic, write_npz_atomic
from cafe_bench.schema import SCHEMA_VERSION, image_key
from cafe_bench.store import RESULTS, RUN, SCORES, latest, read_records, read_scores

SHARDS = "shards"
"""Subdirectory of ``--out`` that holds one run directory per shard."""


def parse_shard(text) -> tuple[int, int]:
    """``"i/N"`` (or an (i, N) pair) as (i, N) with 0 <= i < N; RunConfigError naming the valid form otherwise."""
    try:
        i, n = (int(v) for v in (text.split("/") if isinstance(text, str) else text))
    except (ValueError, TypeError):
        raise RunConfigError(f"--shard must be I/N with integers 0 <= I < N, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise RunConfigError(f"--shard must be I/N with 0 <= I < N, got {i}/{n}")
    return i, n


def shard_of(unit, n: int) -> int:
    """The shard (0..n-1) unit ``unit`` belongs to: from the SHA-256 of its key, independent of everything else."""
    key = json.dumps([unit.layer, unit.feature, image_key(unit.image_id), unit.token])
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % n


def shard_dir(out_dir, i: int, n: int) -> Path:
    """Where shard i of n of the run in ``out_dir`` is stored: ``out_dir/shards/i-of-n``."""
    return Path(out_dir) / SHARDS / f"{i}-of-{n}"


def _record_order(config: dict):
    methods = {m: k for k, m in enumerate(config["methods"])}
    protocols = {p: k for k, p in enumerate(config["protocols"])}

    def key(record):
        image = record["image_id"]
        return (
            record["layer"],
            record["feature"],
            (isinstance(image, str), image),
            record["token"],
            methods.get(record["method"], len(methods)),
            protocols.get(record["protocol"], len(protocols)),
        )

    return key


def merge_shards(out_dir) -> Path:
    """Merge the finished shards under ``out_dir/shards/`` into ``out_dir`` (see the module docstring); returns
    ``out_dir``. RunConfigError naming the missing or unfinished shards, or the first config difference."""
    out_dir = Path(out_dir)
    found = sorted((out_dir / SHARDS).glob("*-of-*")) if (out_dir / SHARDS).is_dir() else []
    if not found:
        raise RunConfigError(f"{out_dir}: no shards under {out_dir / SHARDS}; run `cafe-bench run --shard I/N` first")
    counts = {p.name.split("-of-")[1] for p in found}
    if len(counts) != 1:
        raise RunConfigError(f"{out_dir / SHARDS}: shards of different N ({', '.join(sorted(counts))}); keep one split")
    n = int(counts.pop())
    docs = {}
    for i in range(n):
        path = shard_dir(out_dir, i, n) / RUN
        docs[i] = json.loads(path.read_text()) if path.is_file() else None
    missing = [f"{i}/{n}" for i, doc in docs.items() if doc is None]
    unfinished = [f"{i}/{n}" for i, doc in docs.items() if doc is not None and doc.get("status") != "finished"]
    if missing or unfinished:
        parts = ([f"missing shard(s) {', '.join(missing)}"] if missing else []) + (
            [f"unfinished shard(s) {', '.join(unfinished)} (continue them with --resume)"] if unfinished else []
        )
        raise RunConfigError(f"{out_dir}: " + "; ".join(parts))
    configs = {i: {k: v for k, v in doc["config"].items() if k != "shard"} for i, doc in docs.items()}
    for i in range(1, n):
        if configs[i] != configs[0]:
            first = next(k for k in sorted(set(configs[0]) | set(configs[i])) if configs[0].get(k) != configs[i].get(k))
            raise RunConfigError(f"{out_dir}: shard {i}/{n} differs from shard 0/{n} in {first}; rerun it")
    config = configs[0]
    if (out_dir / RUN).is_file():
        old = json.loads((out_dir / RUN).read_text())
        if old.get("config") != config:
            raise RunConfigError(f"{out_dir} already holds another run; merge into a fresh --out")
    records, scores = [], {}
    for i in range(n):
        records += latest(read_records(shard_dir(out_dir, i, n) / RESULTS))
        scores.update(read_scores(shard_dir(out_dir, i, n)))
    records.sort(key=_record_order(config))
    results = out_dir / RESULTS
    tmp = results.with_name(results.name + ".merge.tmp")
    tmp.unlink(missing_ok=True)
    append_fsync(tmp, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
    write_npz_atomic(out_dir / SCORES, scores)
    tmp.replace(results)
    method_time = {m: round(sum(docs[i]["method_time_s"].get(m, 0.0) for i in range(n)), 3) for m in config["methods"]}
    write_json_atomic(
        out_dir / RUN,
        {
            "schema_version": SCHEMA_VERSION,
            "config": config,
            "provenance": docs[0]["provenance"],
            "status": "finished",
            "started": min(doc["started"] for doc in docs.values()),
            "wall_time_s": max(doc["wall_time_s"] for doc in docs.values()),
            "method_time_s": method_time,
            "n_failed": sum(doc.get("n_failed", 0) for doc in docs.values()),
            "saes": docs[0].get("saes"),
            "shards": [
                {
                    "shard": f"{i}/{n}",
                    "provenance": doc["provenance"],
                    "wall_time_s": doc["wall_time_s"],
                    "method_time_s": doc["method_time_s"],
                    "sae_quality": doc.get("sae_quality"),
                }
                for i, doc in docs.items()
            ],
            "previous_sessions": [],
        },
    )
    return out_dir


def torchrun_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several started by ``torchrun`` (its ``RANK`` and
    ``WORLD_SIZE``), else None."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ["RANK"]), world) if world > 1 and "RANK" in os.environ else None


def distributed_run(out, device: str = "cpu", **run_kwargs):
    """One rank of a ``torchrun`` run: initialise torch.distributed (NCCL on CUDA, gloo on CPU), run this rank's
    shard into ``out/shards/RANK-of-WORLD`` (``run_kwargs`` as for :func:`cafe_bench.run`, ``resume`` included),
    wait for every rank, and on rank 0 merge the shards into ``out``. Returns the merged records on rank 0 and
    None on the others. A killed rank stops the job (torchrun's default); the same command with ``resume=True``
    does only what is missing."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from cafe_bench.results import read_run
    from cafe_bench.runner import resolve_device, run

    rank, world = torchrun_rank()
    device = resolve_device(device)
    if device.startswith("cuda"):
        import os

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=6))
    try:
        run(out=out, device=device, shard=(rank, world), **run_kwargs)
        dist.barrier()
        if rank != 0:
            return None
        merge_shards(out)
        return read_run(out)[0]
    finally:
        dist.destroy_process_group()
