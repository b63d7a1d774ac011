"""The frozen files of the ``relations`` suite beyond model and SAEs: a feature set stratified by locality, and the
reference of every unit (occlusion ERF and non-locality, exact object-level Shapley values, greedy oracle curves).

Feature-set rule (deterministic; every parameter is recorded as ``rules``). Per layer, over ``n_pool`` held-out
scenes: a feature is alive when it fires on at least ``min_images`` scenes and ``min_token_frequency`` of tokens;
``n_candidates`` alive features are drawn with ``numpy.random.default_rng([seed, layer])``; each candidate's
units are its ``n_images`` top scenes (ties: lower id) at the token of its peak (ties: lower patch index). Each
candidate unit gets its non-locality score (:mod:`cafe_bench.locality`, with the suite's baseline); a feature is
non-local when the mean score of its units exceeds the threshold (a unit without a score, no positive effect at
all, makes the mean undefined and the feature local). Then ``n_features`` features are drawn from
the candidates, stratified: ``round(n_features * nonlocal_share)`` from the non-local ones (all of them if fewer)
and the rest from the local ones (topped up from the other stratum if one runs short), each stratum in candidate
order by a second seeded draw. The share of non-local units among all candidates, a random sample of alive
features, is recorded per layer as ``candidate_nonlocal_fraction``: the suite's natural rate, unlike the
stratified set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_bench.featuresets.builder import (
    draw_units,
    feature_set_sha256,
    pool_codes,
    units_sha256,
    write_feature_set,
)
from cafe_bench.files import write_json_atomic
from cafe_bench.locality import NEIGHBOURHOOD_RADIUS, NONLOCAL_THRESHOLD, neighbourhood, nonlocality, occlusion_effects
from cafe_bench.oracle import ORACLE_PROTOCOLS, greedy_oracle
from cafe_bench.protocols.baselines import make_baseline
from cafe_bench.reference import REFERENCE_FORMAT, reference_sha256
from cafe_bench.scenes import SceneConfig, make_images, make_scene
from cafe_bench.shapley import distant_share, exact_shapley, player_masks
from cafe_bench.target import Target, Unit, patches_to_pixels


@dataclass(frozen=True)
class StratifiedRules:
    """Parameters of the locality-stratified feature-set rule (see the module docstring)."""

    n_pool: int = 512
    """Held-out scenes searched for top-activating images."""
    n_candidates: int = 48
    """Alive features drawn per layer and scored for locality."""
    n_features: int = 12
    """Features kept per layer."""
    n_images: int = 2
    """Top scenes (units) per feature."""
    nonlocal_share: float = 0.5
    """Share of kept features drawn from the non-local stratum."""
    min_images: int = 8
    """A feature must fire on at least this many pool scenes to be alive."""
    min_token_frequency: float = 1e-3
    """... and on at least this share of pool tokens."""
    seed: int = 0
    """Seed of both draws."""


def scene_target(backbone, saes, units, scene_seed: int, config: SceneConfig, baseline: str, options: dict):
    """A Target over scene units (their images drawn from stream ``scene_seed``), with ``baseline``."""
    images = torch.from_numpy(make_images(scene_seed, [u.image_id for u in units], config))
    images = images.to(next(backbone.parameters()).device)
    base = make_baseline(baseline, images, **options)
    return Target(backbone, saes, units, images, base, [0] * len(units), baseline_name=baseline)


def _candidates(codes, layer, rules: StratifiedRules) -> tuple[list[Unit], dict]:
    drawn, stats = draw_units(codes[layer], layer, rules.n_candidates, rules)
    stats["n_candidates"] = len({u[1] for u in drawn})
    return [Unit(*u) for u in drawn], stats


def _stratified_draw(features_nonlocal: dict, rules: StratifiedRules, layer: int) -> list[int]:
    rng = np.random.default_rng([rules.seed, layer, 1])
    far = [f for f, nl in features_nonlocal.items() if nl]
    near = [f for f, nl in features_nonlocal.items() if not nl]
    want_far = min(len(far), round(rules.n_features * rules.nonlocal_share))
    want_near = min(len(near), rules.n_features - want_far)
    want_far = min(len(far), rules.n_features - want_near)
    pick = lambda pool, k: rng.choice(pool, size=k, replace=False).tolist() if k else []  # noqa: E731
    return sorted(pick(far, want_far) + pick(near, want_near))


def build_stratified_feature_set(
    backbone, saes, scene_seed: int, config: SceneConfig, baseline: str, options: dict, rules: StratifiedRules
) -> dict:
    """Apply the stratified rule; returns the feature-set document (rules, per-layer stats, units, checksums)."""
    images = torch.from_numpy(make_images(scene_seed, range(rules.n_pool), config))
    codes = pool_codes(backbone, saes, images.to(next(backbone.parameters()).device))
    units, stats = [], {}
    for layer in sorted(saes):
        cands, stat = _candidates(codes, layer, rules)
        target = scene_target(backbone, saes, cands, scene_seed, config, baseline, options)
        scores = nonlocality(occlusion_effects(target), [u.token for u in cands], target.grid)
        by_feature: dict[int, list[float]] = {}
        for unit, score in zip(cands, scores, strict=True):
            by_feature.setdefault(unit.feature, []).append(score)
        nonlocal_feature = {
            f: bool(np.nan_to_num(np.mean(s), nan=-1.0) > NONLOCAL_THRESHOLD) for f, s in by_feature.items()
        }
        kept = set(_stratified_draw(nonlocal_feature, rules, layer))
        units += [u for u in cands if u.feature in kept]
        stat.update(
            candidate_nonlocal_fraction=float(np.mean(np.nan_to_num(scores, nan=-1.0) > NONLOCAL_THRESHOLD)),
            n_nonlocal_features_kept=sum(nonlocal_feature[f] for f in kept),
        )
        stats[str(layer)] = stat
    unit_dicts = [{"layer": u.layer, "feature": u.feature, "image_id": u.image_id, "token": u.token} for u in units]
    doc = {
        "rules": {
            **asdict(rules),
            "baseline": baseline,
            "radius": NEIGHBOURHOOD_RADIUS,
            "threshold": NONLOCAL_THRESHOLD,
        },
        "scene_seed": scene_seed,
        "layers": stats,
        "units": unit_dicts,
        "units_sha256": units_sha256(unit_dicts),
    }
    doc["sha256"] = feature_set_sha256(doc)
    return doc


def build_reference(
    backbone, saes, units, scene_seed: int, config: SceneConfig, baseline: str, options: dict, progress: bool = True
) -> dict:
    """Per unit: clean z_k, occlusion effects and non-locality, exact object Shapley values with the share held by
    players away from the token, and greedy oracle orders and values (insertion, deletion)."""
    target = scene_target(backbone, saes, units, scene_seed, config, baseline, options)
    effects = occlusion_effects(target)
    scores = nonlocality(effects, [u.token for u in units], target.grid)
    players = [player_masks(make_scene(scene_seed, u.image_id, config).masks) for u in units]
    shapley = exact_shapley(target, players)
    oracle = {p: greedy_oracle(target, p, progress=progress) for p in ORACLE_PROTOCOLS}
    clean = target.clean.double().cpu().numpy()
    rows = []
    for i, unit in enumerate(units):
        near = neighbourhood(unit.token, target.grid)
        near_pixels = patches_to_pixels(torch.from_numpy(near)[None], target.grid, target.patch_size)[0, 0].numpy()
        rows.append(
            {
                "layer": unit.layer,
                "feature": unit.feature,
                "image_id": unit.image_id,
                "token": unit.token,
                "clean": float(clean[i]),
                "occlusion": effects[i].tolist(),
                "nonlocality": None if np.isnan(scores[i]) else float(scores[i]),
                "n_objects": len(players[i]) - 1,
                "shapley": shapley[i].tolist(),
                "distant_share": _none_if_nan(distant_share(shapley[i], players[i], near_pixels)),
                "oracle": {p: {"order": o[i].tolist(), "values": v[i].tolist()} for p, (o, v) in oracle.items()},
            }
        )
    doc = {
        "format": REFERENCE_FORMAT,
        "baseline": baseline,
        "baseline_options": dict(options),
        "radius": NEIGHBOURHOOD_RADIUS,
        "threshold": NONLOCAL_THRESHOLD,
        "units": rows,
    }
    doc["sha256"] = reference_sha256(doc)
    return doc


def _none_if_nan(value: float):
    return None if np.isnan(value) else float(value)


def make_freeze(recipe, rules: StratifiedRules = StratifiedRules(), progress: bool = True):
    """The ``freeze`` stage of :func:`cafe_bench.suites.build.build_scene_suite` for ``relations``: writes
    ``features.json`` and ``reference.json`` (each skipped when already written) and returns ``["reference.json"]``."""
    from cafe_bench.suites.build import STREAMS

    baseline = recipe.protocol["baseline"]
    options = {k: v for k, v in recipe.protocol.items() if k not in ("baseline", "steps")}
    seed = STREAMS["featureset"]

    def freeze(backbone, saes, out_dir: Path, report: dict):
        features_path, reference_path = Path(out_dir) / "features.json", Path(out_dir) / "reference.json"
        if not features_path.exists():
            doc = build_stratified_feature_set(backbone, saes, seed, recipe.scene_config, baseline, options, rules)
            write_feature_set(features_path, doc)
        features = json.loads(features_path.read_text())
        if not reference_path.exists():
            units = [Unit(**u) for u in features["units"]]
            with tqdm(total=1, desc="reference", disable=not progress) as bar:
                ref = build_reference(backbone, saes, units, seed, recipe.scene_config, baseline, options, progress)
                bar.update(1)
            write_json_atomic(reference_path, ref)
        return ["reference.json"]

    return freeze
