"""Does the benchmark measure what it claims? Per layer: non-locality, agreement with exact ground truth, an
oracle bound with normalised scores, and the model-randomisation sanity check, for one run directory.

``validity(run_dir)`` returns (and ``write_validity`` stores as ``DIR/validity.json``), per layer:

- ``early_share``: how much of the best method's insertion curve happens by 1/16 of the patches
  (:func:`early_share`): a benchmark whose curves saturate at once cannot rank methods.
- ``nonlocal_fraction``: share of the run's units whose non-locality score (:mod:`cafe_bench.locality`)
  exceeds the threshold; ``n_units``.
- ``gt_agreement``: per method, the mean over units of Kendall's tau between its patch map aggregated to
  objects and the exact object-level Shapley values (:mod:`cafe_bench.shapley`).
- ``kendall_tau``: per protocol, Kendall's tau between the methods' ranking by mean AUC (best first, the
  protocol's direction) and their ranking by ``gt_agreement``; ``random`` is a control and not ranked.
- ``oracle_auc``: per protocol, the mean AUC of the greedy oracle curves (:mod:`cafe_bench.oracle`).
- ``normalised_auc``: per protocol and method, (AUC - random) / (oracle - random) with a clustered bootstrap CI.
- ``sanity``: per method, the median Spearman rho between maps of the trained model and of the model with
  blocks 0..L redrawn (:mod:`cafe_bench.sanity`), and whether it is flagged.

At top level, ``unit_nonlocality`` lists every unit's score and verdict (what ``leaderboard --stratify
locality`` reads), and ``nonlocality_check``: precision and recall of the non-locality criterion against the exact
truth on every unit of the suite's reference (a unit is truly non-local when players with no pixel in the
token's neighbourhood hold most of the positive Shapley mass). Ground truth and oracle come from the suite's
frozen reference (``relations``); for a suite without one, or a run whose baseline differs from the
reference's, those entries are None and ``notes`` says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from cafe_bench.errors import CafeBenchError
from cafe_bench.files import write_json_atomic
from cafe_bench.locality import NEIGHBOURHOOD_RADIUS, NONLOCAL_THRESHOLD, is_nonlocal, nonlocality, occlusion_effects
from cafe_bench.oracle import ORACLE_PROTOCOLS
from cafe_bench.reference import by_unit, oracle_curve
from cafe_bench.results import read_run
from cafe_bench.schema import UNIT_FIELDS
from cafe_bench.stats import auc, normalised_ci
from cafe_bench.store import read_scores
from cafe_bench.target import Unit

VALIDITY_FILE = "validity.json"
CONTROL = "random"
"""The control method: the zero of normalised AUC, never ranked."""


def _key(row) -> tuple:
    return tuple(int(row[f]) if f != "image_id" or not isinstance(row[f], str) else row[f] for f in UNIT_FIELDS)


EARLY_FRACTION = 1 / 16
"""Where a curve's early share is read: after 1/16 of the patches."""
MIN_CHANGE = 0.05
"""Units whose best curve changes by less than this from start to end have no early share."""


def early_share(records: pd.DataFrame, at: float = EARLY_FRACTION, min_change: float = MIN_CHANGE) -> dict:
    """How much of the best curve's change happens early, by ``at`` of the patches.

    Per unit: the non-random method with the highest insertion AUC, its normalised curve c read at fraction ``at``
    (default 1/16) by linear interpolation, and share = (c(at) - c(0)) / (c(1) - c(0)); units with
    |c(1) - c(0)| < ``min_change`` (default 0.05) are left out. Returns the median share, the fraction of units with
    share >= 0.8 and the counts. A benchmark whose curves saturate by then (median near 1) ranks methods by their
    first few patches only."""
    ins = records[(records["status"] == "ok") & (records["protocol"] == "insertion") & (records["method"] != CONTROL)]
    shares, skipped = [], 0
    for _, unit in ins.groupby(list(UNIT_FIELDS), sort=True):
        best = unit.loc[unit["auc"].idxmax()]
        fractions, curve = np.asarray(best["fractions"], dtype=float), np.asarray(best["curve"], dtype=float)
        change = curve[-1] - curve[0]
        if abs(change) < min_change:
            skipped += 1
            continue
        shares.append(float((np.interp(at, fractions, curve) - curve[0]) / change))
    return {
        "at": at,
        "median_share": float(np.median(shares)) if shares else None,
        "fraction_at_least_0.8": float(np.mean(np.asarray(shares) >= 0.8)) if shares else None,
        "n_units": len(shares),
        "n_left_out": skipped,
    }


def _plain(key) -> list:
    return [v if isinstance(v, str) else int(v) for v in key]


def nonlocality_check(reference: dict) -> dict:
    """Precision and recall of the non-locality criterion on the reference's units against the Shapley truth."""
    from cafe_bench.locality import precision_recall

    units = reference["units"]
    predicted = is_nonlocal([np.nan if u["nonlocality"] is None else u["nonlocality"] for u in units])
    truth = np.array([(u["distant_share"] or 0.0) > 0.5 for u in units])
    out = precision_recall(predicted, truth)
    layers = sorted({u["layer"] for u in units})
    out["truth_fraction_by_layer"] = {
        str(layer): float(np.mean([t for t, u in zip(truth, units, strict=True) if u["layer"] == layer]))
        for layer in layers
    }
    out.update(n_units=len(units), truth="distant_share > 0.5", radius=reference["radius"])
    return out


def _unit_nonlocality(suite, records: pd.DataFrame, baseline: str, reference: dict | None) -> dict:
    """{unit key: non-locality score} of every unit of ``records``, from the reference when it has the unit, else
    by occlusion now (a unit whose feature is dead on the clean image has no positive effect: None)."""
    keys = sorted({tuple(_plain(k)) for k in records[list(UNIT_FIELDS)].itertuples(index=False, name=None)}, key=str)
    ref = by_unit(reference) if reference is not None else {}
    out = {k: ref[k]["nonlocality"] for k in keys if k in ref}
    todo = [Unit(*k) for k in keys if k not in ref]
    if todo:
        target = suite.target(todo, baseline=baseline)
        scores = nonlocality(occlusion_effects(target), [u.token for u in todo], target.grid)
        out.update({u.key(): (None if np.isnan(s) else float(s)) for u, s in zip(todo, scores, strict=True)})
    return out


def _gt_agreement(suite, ok: pd.DataFrame, scores: dict, ref: dict) -> tuple[dict, int]:
    """({method: mean Kendall tau with the Shapley values}, units): the mean over the units where every method's
    tau is defined (a constant map has none), so that all methods are averaged over the same units."""
    from cafe_bench.shapley import agreement

    taus: dict[str, dict] = {}
    players: dict = {}  # object masks of each image, drawn once for all methods
    for _, row in ok.drop_duplicates(["method", *UNIT_FIELDS]).iterrows():
        entry, key = ref.get(_key(row)), row["scores_key"]
        if entry is not None and key in scores:
            if row["image_id"] not in players:
                players[row["image_id"]] = suite.players(row["image_id"])
            masks = players[row["image_id"]]
            tau = agreement(scores[key], masks, np.asarray(entry["shapley"]), int(suite.backbone.patch_size))
            taus.setdefault(row["method"], {})[_key(row)] = tau
    if not taus:
        return {}, 0
    common = set.intersection(*(set(k for k, t in per.items() if not np.isnan(t)) for per in taus.values()))
    if not common:
        return {m: None for m in taus}, 0
    return {m: float(np.mean([per[k] for k in common])) for m, per in taus.items()}, len(common)


def _rank_tau(auc_means: dict, agreement: dict, sign: float) -> dict:
    methods = sorted(m for m in auc_means if m != CONTROL and agreement.get(m) is not None)
    if len(methods) < 2:
        return {"tau": None, "p_value": None, "n_methods": len(methods)}
    result = kendalltau([sign * auc_means[m] for m in methods], [agreement[m] for m in methods])
    tau = None if np.isnan(result.statistic) else float(result.statistic)
    return {"tau": tau, "p_value": None if tau is None else float(result.pvalue), "n_methods": len(methods)}


def _oracle_and_normalised(lp: pd.DataFrame, ref: dict, n_patches: int, n_resamples: int, seed: int):
    """Mean oracle AUC and each method's normalised AUC (with CI) for one layer x protocol."""
    protocol = lp["protocol"].iloc[0]
    units = lp.drop_duplicates(list(UNIT_FIELDS))
    oracle = {}
    for _, row in units.iterrows():
        entry = ref.get(_key(row))
        if entry is not None:
            counts = np.rint(np.asarray(row["fractions"]) * n_patches).astype(int)
            oracle[_key(row)] = auc(row["fractions"], oracle_curve(entry, protocol, counts))
    if not oracle:
        return None, {}
    by_method = {m: {_key(r): r["auc"] for _, r in g.iterrows()} for m, g in lp.groupby("method")}
    normalised = {}
    if CONTROL in by_method:
        for method, aucs in by_method.items():
            common = sorted(set(aucs) & set(by_method[CONTROL]) & set(oracle), key=str)
            if not common:
                continue
            est, low, high = normalised_ci(
                [aucs[k] for k in common],
                [by_method[CONTROL][k] for k in common],
                [oracle[k] for k in common],
                [k[1] for k in common],
                n_resamples=n_resamples,
                seed=seed,
            )
            normalised[method] = {"mean": est, "ci_low": low, "ci_high": high, "n_units": len(common)}
    return float(np.mean(list(oracle.values()))), normalised


def _sanity(suite, methods, layers, n_units: int, seed: int, progress: bool, baseline: str, params, units) -> dict:
    """The sanity check with the run's baseline, method parameters and units (the first ``n_units`` of each layer)."""
    from cafe_bench.sanity import DEFAULT_THRESHOLD, cascading_randomisation, flags

    rows = cascading_randomisation(
        suite,
        methods,
        layers,
        n_units=n_units,
        seed=seed,
        progress=progress,
        baseline=baseline,
        method_args=params,
        units=units,
    )
    flagged = flags(rows, DEFAULT_THRESHOLD)
    out = {}
    for row in rows:
        if row.randomised_from == 0:
            out.setdefault(str(row.layer), {})[row.method] = {
                "median_rho": row.median_rho,
                "flagged": flagged[row.layer][row.method],
                "n_units": row.n_units,
            }
    return out


def validity(
    run_dir,
    suite=None,
    sanity_units: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The validity document of run ``run_dir`` (see the module docstring).

    Args:
        run_dir: a directory written by ``cafe-bench run --out``.
        suite: the run's suite, loaded (default: loaded by the name the run recorded).
        sanity_units: units per layer of the sanity check (default 8; 0 skips it).
        n_resamples: bootstrap replicates of the normalised-AUC CIs (default 1000).
        seed: seed of the bootstrap and of the sanity check's redrawn parameters (default 0).
    """
    from cafe_bench.suites import check_run_files, load_suite

    records, run_doc = read_run(run_dir)
    config = run_doc["config"]
    suite = suite if suite is not None else load_suite(config["suite"])
    if suite.name != config["suite"]:
        raise CafeBenchError(f"{run_dir} is a run of suite {config['suite']!r}, not of {suite.name!r}")
    check_run_files(suite, config, Path(run_dir) / "run.json")
    ok = records[records["status"] == "ok"]
    reference, notes = suite.reference, []
    if reference is not None and reference["baseline"] != config["baseline"]:
        notes.append(
            f"the run's baseline {config['baseline']!r} is not the reference's {reference['baseline']!r}: "
            "no ground truth or oracle"
        )
        reference = None
    elif reference is None:
        notes.append(f"suite {suite.name!r} has no frozen reference: no ground truth or oracle")
    precision = config.get("precision") or "fp32"
    if reference is not None and precision != "fp32":
        from cafe_bench.protocols.engine import PRECISION_TOLERANCE

        notes.append(
            f"the run's curves are {precision}, the reference's oracle and ground truth fp32: per-unit AUCs may "
            f"differ from an fp32 run's by up to {PRECISION_TOLERANCE[precision]:g} (the stated tolerance)"
        )
    ref = by_unit(reference) if reference is not None else {}
    scores = read_scores(run_dir) if ref else {}
    local = _unit_nonlocality(suite, records, config["baseline"], reference)  # every unit, dead ones too
    n_patches = int(suite.backbone.n_patches)
    layers = {}
    for layer, lrows in ok.groupby("layer"):
        keys = set(lrows[list(UNIT_FIELDS)].itertuples(index=False, name=None))
        values = [local[k] for k in keys]
        entry = {
            "n_units": len(keys),
            "early_share": early_share(lrows),
            "nonlocal_fraction": float(np.mean(is_nonlocal([np.nan if v is None else v for v in values]))),
            "gt_agreement": None,
            "kendall_tau": None,
            "oracle_auc": None,
            "normalised_auc": None,
        }
        if ref:
            agreement, n_agree = _gt_agreement(suite, lrows, scores, ref)
            entry.update(
                gt_agreement=agreement, gt_agreement_units=n_agree, kendall_tau={}, oracle_auc={}, normalised_auc={}
            )
            for protocol, lp in lrows.groupby("protocol"):
                means = lp.groupby("method")["auc"].mean().to_dict()
                sign = 1.0 if bool(lp["higher_is_better"].iloc[0]) else -1.0
                entry["kendall_tau"][protocol] = _rank_tau(means, agreement, sign)
                if protocol in ORACLE_PROTOCOLS:
                    oracle, normalised = _oracle_and_normalised(lp, ref, n_patches, n_resamples, seed)
                    entry["oracle_auc"][protocol] = oracle
                    entry["normalised_auc"][protocol] = normalised
        layers[str(int(layer))] = entry
    methods = sorted(ok["method"].unique())
    if ref and CONTROL not in methods:
        notes.append(f"the run has no `{CONTROL}` method: no normalised AUC (random is its zero)")
    if sanity_units > 0:
        sanity = _sanity(
            suite,
            methods,
            sorted(int(k) for k in layers),
            sanity_units,
            seed,
            progress,
            config["baseline"],
            config.get("method_params"),
            [Unit(*_plain(k)) for k in dict.fromkeys(records[list(UNIT_FIELDS)].itertuples(index=False, name=None))],
        )
        for layer, entry in layers.items():
            entry["sanity"] = sanity.get(layer)
    else:
        notes.append("sanity check skipped (sanity_units = 0)")
    return {
        "suite": suite.name,
        "suite_version": suite.version,
        "run": str(run_dir),
        "baseline": config["baseline"],
        "steps": config["steps"],
        "methods": methods,
        "criterion": {
            "score": "share of positive single-patch occlusion effect outside the token's neighbourhood",
            "radius": NEIGHBOURHOOD_RADIUS,
            "threshold": NONLOCAL_THRESHOLD,
        },
        "nonlocality_check": nonlocality_check(reference) if reference is not None else None,
        "candidate_nonlocal_fraction": {
            layer: stats.get("candidate_nonlocal_fraction")
            for layer, stats in suite.feature_set.get("layers", {}).items()
            if isinstance(stats, dict) and "candidate_nonlocal_fraction" in stats
        }
        or None,
        "layers": layers,
        "unit_nonlocality": [
            {
                **dict(zip(UNIT_FIELDS, _plain(key), strict=True)),
                "nonlocality": value,
                "nonlocal": bool(is_nonlocal([np.nan if value is None else value])[0]),
            }
            for key, value in sorted(local.items(), key=lambda kv: str(kv[0]))
        ],
        "sanity_units": sanity_units,
        "seed": seed,
        "notes": notes,
    }


def write_validity(run_dir, **kwargs) -> Path:
    """Compute :func:`validity` for ``run_dir`` and write it to ``run_dir/validity.json`` (atomic)."""
    doc = validity(run_dir, **kwargs)
    path = Path(run_dir) / VALIDITY_FILE
    write_json_atomic(path, _finite(doc))
    return path


def _finite(value):
    """NaN and infinities become None, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def read_validity(run_dir) -> dict:
    """``run_dir/validity.json``; CafeBenchError telling to run ``cafe-bench validity`` when it is missing."""
    import json

    path = Path(run_dir) / VALIDITY_FILE
    if not path.is_file():
        raise CafeBenchError(f"{path}: no such file; run `cafe-bench validity {run_dir}` first")
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise CafeBenchError(f"{path}: not valid JSON; rerun `cafe-bench validity {run_dir}`") from None
    needed = {"layers": dict, "methods": list, "unit_nonlocality": list, "baseline": str}
    bad = [k for k, kind in needed.items() if not isinstance(doc, dict) or not isinstance(doc.get(k), kind)]
    if bad:
        raise CafeBenchError(f"{path}: lacks '{bad[0]}'; rerun `cafe-bench validity {run_dir}`")
    return doc


def _ci_text(entry) -> str:
    if not entry or entry.get("mean") is None:
        return ""
    low, high = entry.get("ci_low"), entry.get("ci_high")
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{entry['mean']:.2f}{ci}"


def layer_table(doc: dict) -> pd.DataFrame:
    """Per layer: units, non-local fraction, median early share, Kendall tau and oracle AUC per protocol (text)."""

    def num(value):
        return "" if value is None else f"{value:.3f}"

    rows = []
    for layer, entry in sorted(doc["layers"].items(), key=lambda kv: int(kv[0])):
        row = {"layer": layer, "units": entry["n_units"], "non-local": num(entry["nonlocal_fraction"])}
        row["early share (median)"] = num(entry["early_share"]["median_share"])
        row.update({f"tau {p}": num((t or {}).get("tau")) for p, t in (entry.get("kendall_tau") or {}).items()})
        row.update({f"oracle {p}": num(a) for p, a in (entry.get("oracle_auc") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def validity_table(doc: dict) -> pd.DataFrame:
    """Per layer x method: normalised AUC (with CI) per oracle protocol, and the sanity rho with its flag."""
    rows = []
    for layer, entry in sorted(doc["layers"].items(), key=lambda kv: int(kv[0])):
        normalised = entry.get("normalised_auc") or {}
        sanity = entry.get("sanity") or {}
        for method in doc["methods"]:
            row = {"layer": int(layer), "method": method}
            for protocol in ORACLE_PROTOCOLS:
                row[f"normalised {protocol}"] = _ci_text((normalised.get(protocol) or {}).get(method))
            check = sanity.get(method) or {}
            rho = check.get("median_rho")
            row["sanity rho"] = "" if rho is None else f"{rho:+.2f}"
            row["flag"] = "⚠ maps barely change" if check.get("flagged") else ""
            rows.append(row)
    return pd.DataFrame(rows)


def board_validity_text(run_dirs, hint: bool = True) -> str:
    """Markdown appended to a board: normalised AUC and sanity flags from each run's ``validity.json``, or (when
    ``hint``, the default) a line saying how to get them."""
    from cafe_bench.sanity import DEFAULT_THRESHOLD

    parts = []
    for run_dir in run_dirs:
        path = Path(run_dir) / VALIDITY_FILE
        if not path.is_file():
            if hint:
                parts.append(f"\nNormalised AUC and sanity flags of {run_dir}: run `cafe-bench validity {run_dir}`.\n")
            continue
        doc = read_validity(run_dir)
        notes = "".join(f"\n- {note}" for note in doc.get("notes", []))
        parts.append(
            f"\nValidity of {Path(run_dir).name} (its validity.json): normalised AUC = (AUC - random) / "
            "(oracle - random), 95% CI; sanity rho = "
            f"median Spearman rho of maps after redrawing blocks 0..L, flagged above |{DEFAULT_THRESHOLD}|.{notes}\n\n"
            + validity_table(doc).to_markdown(index=False, disable_numparse=True)
            + "\n"
        )
    return "".join(parts)


def board_validity(run_dirs) -> dict | None:
    """{run directory name: {layer: {normalised_auc, sanity}}} from each run's ``validity.json`` for a saved board,
    or None when no run has one."""
    out = {}
    for run_dir in run_dirs:
        if (Path(run_dir) / VALIDITY_FILE).is_file():
            layers = read_validity(run_dir)["layers"]
            out[Path(run_dir).name] = {
                layer: {"normalised_auc": e.get("normalised_auc"), "sanity": e.get("sanity")}
                for layer, e in layers.items()
            }
    return out or None


def stratify_locality(records: pd.DataFrame, run_dirs) -> pd.DataFrame:
    """``records`` with a ``stratum`` column (``local`` / ``non-local``) from each run's ``validity.json``;
    CafeBenchError when a run has none or a unit has no verdict."""
    verdict = {}  # a verdict depends on the baseline: keyed by it as well
    for run_dir in run_dirs:
        doc = read_validity(run_dir)
        for unit in doc["unit_nonlocality"]:
            verdict[(doc["baseline"], *(unit[f] for f in UNIT_FIELDS))] = "non-local" if unit["nonlocal"] else "local"
    fields = ["baseline", *UNIT_FIELDS]
    keys = [(k[0], *_plain(k[1:])) for k in records[fields].itertuples(index=False, name=None)]
    missing = [k for k in keys if k not in verdict]
    if missing:
        raise CafeBenchError(f"unit {missing[0]} has no locality verdict; rerun `cafe-bench validity` on its run")
    return records.assign(stratum=[verdict[k] for k in keys])
