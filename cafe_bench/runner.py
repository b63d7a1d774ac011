"""``run``: every method x protocol on every unit of a suite, batched, stored, resumable."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_bench.attributors.base import AttributorError
from cafe_bench.attributors.registry import attributor_source, attributor_version, get_attributor
from cafe_bench.errors import CafeBenchError, RunConfigError, UnknownNameError
from cafe_bench.memory import default_budget, parse_memory
from cafe_bench.protocols.baselines import check_baseline
from cafe_bench.protocols.engine import check_precision, check_steps, mixes_tokens, normalised, run_curves
from cafe_bench.protocols.registry import DEFAULT_PROTOCOLS, get_protocol
from cafe_bench.schema import DEAD, UNIT_FIELDS, Record, RunConfig, record_key, scores_key, status_kind
from cafe_bench.stats import auc
from cafe_bench.store import RunStore, open_store

DEFAULT_METHODS = (
    "activation",
    "random",
    "gradient",
    "grad_x_input",
    "integrated_gradients",
    "smoothgrad",
    "occlusion",
    "kernel_shap",
    "cp_lrp",
    "attnlrp",
)
"""Methods run when none are named: every built-in (plugins run when named)."""
NORMALISATION = "z_k(perturbed) / z_k(clean), no clipping"
AUC_RULE = "trapezoid over the fraction of patches, both ends included"


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` from ``auto`` (CUDA when torch sees a device), ``cpu`` or ``cuda``; raises UnknownNameError
    naming the choices, or RunConfigError for ``cuda`` without a device."""
    valid = ("auto", "cpu", "cuda")
    if device not in valid:
        raise UnknownNameError(f"unknown device {device!r}; valid: {', '.join(valid)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("device 'cuda' requested but torch sees no CUDA device; valid here: cpu, auto")
    return device


def _as_list(value, default, what: str) -> list:
    """The choices as a list without repeats (a repeat would count its units twice); none given -> error."""
    if value is None:
        return list(default)
    if isinstance(value, str | int):
        value = [value]
    value = list(dict.fromkeys(value))
    if not value:
        raise RunConfigError(f"no {what} given; leave the option out to run all of them")
    return value


def build_attributors(methods, method_args: dict | None) -> dict:
    """{name: configured attributor}; ``method_args`` maps a method to its parameters. A method in
    ``method_args`` that is not run, an unknown method or parameter raises CafeBenchError naming the valid ones."""
    method_args = dict(method_args or {})
    extra = [m for m in method_args if m not in methods]
    if extra:
        raise RunConfigError(f"--method-args names {extra[0]!r}, which is not run; methods run: {', '.join(methods)}")
    return {m: get_attributor(m, **method_args.get(m, {})) for m in methods}


def build_config(suite, attributors: dict, protocols, layers, baseline, steps, seed, precision="fp32") -> dict:
    """Validate the choices against the suite; the config recorded in run.json (a :class:`RunConfig`)."""
    check_precision(precision)
    for p in protocols:
        get_protocol(p)
    suite.check_layers(layers)
    check_baseline(baseline)
    config = RunConfig(
        suite=suite.name,
        suite_version=suite.version,
        suite_files=suite.hashes,
        methods=list(attributors),
        method_params={m: a.params() for m, a in attributors.items()},
        method_costs={m: asdict(a.cost(suite.backbone.n_patches)) for m, a in attributors.items()},
        method_sources={
            m: {"source": attributor_source(m), "version": attributor_version(m), "deterministic": a.deterministic}
            for m, a in attributors.items()
        },
        protocols=list(protocols),
        layers=[int(layer) for layer in layers],
        baseline=baseline,
        blur_sigma=suite.protocol_defaults.get("blur_sigma", 4.0),
        steps=check_steps(steps, suite.backbone.n_patches),
        seed=int(seed),
        normalisation=NORMALISATION,
        auc=AUC_RULE,
        precision=None if precision == "fp32" else precision,
    )
    return json.loads(json.dumps(config.to_dict()))  # JSON types, as stored


def _records(target, method, protocol, curves, config, status_override=None) -> list[dict]:
    clean = target.clean.detach().cpu().numpy().astype(np.float64)
    norm = normalised(curves, clean) if curves is not None else None
    source = config["method_sources"][method]
    out = []
    for i, unit in enumerate(target.units):
        fields = {
            "suite": config["suite"],
            "suite_version": config["suite_version"],
            **dict(zip(UNIT_FIELDS, unit.key(), strict=True)),
            "method": method,
            "method_params": config["method_params"][method],
            "method_source": source["source"],
            "method_version": source["version"],
            "protocol": protocol,
            "higher_is_better": get_protocol(protocol).higher_is_better,
            "baseline": config["baseline"],
            "steps": config["steps"],
            "seed": target.seeds[i],
            "clean_activation": float(clean[i]),
            "scores_key": scores_key(*unit.key(), method),
        }
        if status_override is not None:
            fields.update(status=status_override, fractions=None, curve=None, auc=None, scores_key=None)
        elif clean[i] == 0:
            fields.update(status=DEAD, fractions=None, curve=None, auc=None)
        else:
            curve = norm[i].tolist()
            fields.update(
                status="ok", fractions=curves.fractions.tolist(), curve=curve, auc=auc(curves.fractions, curve)
            )
        out.append(Record(**fields).to_dict())
    return out


SAE_QUALITY_IMAGES = 64
"""FVU and L0 are measured on at most this many of the run's images (the first by image id)."""


def _sae_quality(suite, layers, units) -> dict:
    """FVU and L0 of each run SAE on the patch tokens of (up to ``SAE_QUALITY_IMAGES`` of) the run's images, by
    layer (str keys, as stored);
    warns when an FVU is implausible (a wrong b_dec or normalisation convention shows here)."""
    from cafe_bench.sae.quality import sae_quality, warn_implausible

    image_ids = sorted({u.image_id for u in units})[:SAE_QUALITY_IMAGES]  # bounded cost on large suites
    if not image_ids:
        return {}
    quality = sae_quality(suite.backbone, {layer: suite.saes[layer] for layer in layers}, suite.images(image_ids))
    warn_implausible(quality)
    return {str(layer): q for layer, q in quality.items()}


def failure_summary(records) -> list[str]:
    """One line per method with failed records: the count and the first failure's message."""
    lines = []
    failed = [r for r in records if status_kind(r["status"]) == "failed"]
    for method in dict.fromkeys(r["method"] for r in failed):
        mine = [r for r in failed if r["method"] == method]
        lines.append(f"{method}: {len(mine)} failed record(s); first: {mine[0]['status']}")
    return lines


def run(
    suite=None,
    methods=None,
    protocols=None,
    layers=None,
    baseline: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path | None = None,
    resume: bool = False,
    units=None,
    unit_batch: int = 32,
    forward_batch: int | None = None,
    progress: bool = True,
    method_args: dict | None = None,
    shard=None,
    max_memory=None,
    precision: str = "fp32",
):
    """Run methods x protocols on every unit of a suite and return the records as a pandas DataFrame.

    Args:
        suite: a built-in suite name, a suite file or directory, or a loaded ``Suite`` (default ``relations``).
        methods: attributor names (default: every built-in, see ``DEFAULT_METHODS``).
        protocols: registered protocol names (default ``insertion`` and ``deletion``; also ``insertion_lerf``,
            ``deletion_lerf``).
        layers: SAE layers to run (default all of the suite's).
        baseline: a registered baseline: ``blur``, ``mean``, ``zero`` or ``road`` (default: the suite's).
        steps: curve steps S in 1..P (default: the suite's, 32 for relations, 16 for tiny).
        seed: run seed; per-unit seeds derive from it (default 0).
        device: ``cpu`` (default), ``cuda`` or ``auto``.
        out: directory for ``results.jsonl``, ``scores.npz`` and ``run.json``; None keeps results in memory only.
        resume: continue a run stored in ``out`` with the same config, skipping finished work.
        units: run these ``Unit``s instead of the suite's frozen feature set (recorded in the config).
        unit_batch: units attributed together (default 32); forward_batch: perturbed images per forward pass
            (default: as many as ``max_memory`` allows).
        max_memory: bytes (or a size such as ``"2GB"``) one forward pass of perturbed images may take (default:
            :func:`cafe_bench.memory.default_budget` of the device); recorded in run.json, not part of the config.
        precision: ``fp32`` (default), ``bf16`` or ``fp16``: autocast of the curves' forward passes (attributions
            stay fp32); part of the config, so a run is only compared with runs of the same precision.
        progress: show a progress bar on stderr.
        method_args: ``{method: {parameter: value}}`` (default: every method's defaults); validated, recorded.
        shard: ``"i/N"`` or (i, N): run only the units of shard i of N (:mod:`cafe_bench.shards`); with ``out``,
            stored in ``out/shards/i-of-N`` for ``cafe-bench merge`` (default: the whole run).
    Returns:
        DataFrame, one row per unit x method x protocol (the stored records, finished ones included). Failed
        records are stored with status ``failed: ...``; see :func:`failure_summary`.
    """
    import pandas as pd

    from cafe_bench.provenance import collect
    from cafe_bench.suites import DEFAULT_SUITE, Suite, load_suite

    suite = DEFAULT_SUITE if suite is None else suite
    if isinstance(suite, Suite):
        device = str(suite.device)  # a loaded suite runs where it lives
    else:
        device = resolve_device(device)
        suite = load_suite(suite, device=device)
    if resume and out is None:
        raise RunConfigError("--resume needs --out: the directory of the run to continue")
    if int(seed) < 0:
        raise RunConfigError(f"seed must be a non-negative integer, got {seed}")
    methods = _as_list(methods, DEFAULT_METHODS, "methods")
    protocols = _as_list(protocols, DEFAULT_PROTOCOLS, "protocols")
    layers = [int(layer) for layer in _as_list(layers, suite.layers, "layers")]
    baseline = baseline or suite.protocol_defaults["baseline"]
    steps = steps if steps is not None else suite.protocol_defaults["steps"]
    attributors = build_attributors(methods, method_args)  # unknown names and parameters raise here
    budget = parse_memory(max_memory) if max_memory is not None else default_budget(suite.device)
    config = build_config(suite, attributors, protocols, layers, baseline, steps, seed, precision)
    steps = config["steps"]
    if units is None:
        units = suite.units(layers)
    else:
        units = list(dict.fromkeys(units))
        for unit in units:
            suite.check_unit(unit)
        units = [u for u in units if u.layer in layers]
        config["units"] = [list(u.key()) for u in units]
    if shard is not None:
        from cafe_bench.shards import parse_shard, shard_dir, shard_of

        index, count = parse_shard(shard)
        units = [u for u in units if shard_of(u, count) == index]
        config["shard"] = [index, count]
        out = None if out is None else shard_dir(out, index, count)
    for layer in layers:
        suite.saes[layer]  # noqa: B018  (loads the run's SAEs now: a wrong width is refused before anything is written)
    if out is not None:
        store = open_store(Path(out), config, collect(device), resume)  # checks the directory before writing
    else:
        store = RunStore(None, set())
    quality = _sae_quality(suite, layers, units)
    engine = {
        "max_memory_bytes": budget,
        "forward_batch": forward_batch,
        "token_mixing": mixes_tokens(suite.backbone, baseline),
    }
    if out is not None:
        store.update_run(
            saes={str(layer): suite.saes[layer].describe() for layer in layers}, sae_quality=quality, engine=engine
        )
    all_records, timings = [], {m: 0.0 for m in methods}
    started = time.perf_counter()
    bar = tqdm(
        total=len(units) * len(methods) * len(protocols),
        desc=f"cafe-bench {suite.name}",
        unit="curve",
        disable=not progress,
    )
    for layer in layers:
        layer_units = [u for u in units if u.layer == layer]
        for lo in range(0, len(layer_units), unit_batch):
            chunk = layer_units[lo : lo + unit_batch]
            todo = {
                m: [p for p in protocols if any((*u.key(), m, p) not in store.done for u in chunk)] for m in methods
            }
            bar.update(sum(len(protocols) - len(todo[m]) for m in methods) * len(chunk))
            if not any(todo.values()):
                continue
            target = suite.target(chunk, baseline=baseline, seed=seed)
            target.max_memory = budget
            with torch.no_grad():
                endpoints = (target.forward_distinct(target.baseline), target.clean)
            for m in methods:
                if not todo[m]:
                    continue
                t0 = time.perf_counter()
                batch_records, batch_scores = [], {}
                try:
                    scores = attributors[m].scores(target)
                except AttributorError as exc:
                    bar.write(
                        f"cafe-bench: {exc} on layer {layer} units {lo}..{lo + len(chunk) - 1}; recorded as failed"
                    )
                    for p in todo[m]:
                        batch_records += _records(target, m, p, None, config, status_override=f"failed: {exc}")
                else:
                    scores_np = scores.detach().cpu().numpy().astype(np.float32)
                    batch_scores = {scores_key(*u.key(), m): scores_np[i] for i, u in enumerate(chunk)}
                    for p in todo[m]:
                        curves = run_curves(
                            target, scores, p, steps, forward_batch, endpoints, budget, precision=precision
                        )
                        batch_records += _records(target, m, p, curves, config)
                batch_records = [r for r in batch_records if record_key(r) not in store.done]
                store.append(batch_records, batch_scores)
                timings[m] += time.perf_counter() - t0
                all_records += batch_records
                bar.update(len(chunk) * len(todo[m]))
    bar.close()
    wall = time.perf_counter() - started
    if out is not None:
        store.merge_scores()
        records = store.records()
        store.update_run(
            status="finished",
            wall_time_s=round(wall, 3),
            method_time_s={m: round(t, 3) for m, t in timings.items()},
            n_failed=sum(status_kind(r["status"]) == "failed" for r in records),
        )
        return pd.DataFrame(records)
    return pd.DataFrame(all_records)


__all__ = ["run", "failure_summary", "DEFAULT_METHODS", "CafeBenchError"]
