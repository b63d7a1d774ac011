"""Out-of-sample check of the non-locality criterion on `relations`, into
benchmarks/results/nonlocality_relations.json (read by scripts/update_readme.py).

    python scripts/measure_nonlocality.py

The suite's 72 units were drawn from 288 candidate units (48 random alive features x 2 scenes per block); the
other 216 candidates were never used to choose anything and serve as a held-out set. For both sets: the truth
from exact object-level Shapley values (objects that do not touch the token's 3x3 neighbourhood hold more than
half of the positive mass), and precision and recall at several thresholds of (a) the criterion (single-patch
occlusion share outside the neighbourhood) and (b) an alternative considered, the exact two-player Shapley
share of the region outside the neighbourhood (players: the neighbourhood, the rest; 3 forward passes a unit),
each with the neighbourhood of radius 1 (3x3, the criterion's) and 2 (5x5). The configuration with the best
min(precision, recall) on the held-out units is named, with its figures on the suite's units.
"""

import time
from pathlib import Path

import numpy as np
import torch

from cafe_bench.featuresets.builder import pool_codes
from cafe_bench.files import write_json_atomic
from cafe_bench.locality import is_nonlocal, neighbourhood, nonlocality, occlusion_effects, precision_recall
from cafe_bench.provenance import collect
from cafe_bench.scenes import make_images
from cafe_bench.shapley import distant_share, exact_shapley
from cafe_bench.suites import load_suite
from cafe_bench.suites.build import RELATIONS, STREAMS
from cafe_bench.suites.relations_build import StratifiedRules, _candidates, scene_target
from cafe_bench.target import patches_to_pixels

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


@torch.no_grad()
def two_player_share(target, units, radius: int = 1) -> np.ndarray:
    """Exact two-player Shapley share of the region outside each token's neighbourhood (positive parts)."""
    near = torch.stack([torch.from_numpy(neighbourhood(u.token, target.grid, radius)) for u in units])
    pix = patches_to_pixels(near, target.grid, target.patch_size)
    idx = torch.arange(len(units))
    keep = target.activations(torch.where(pix, target.images, target.baseline), idx).double().numpy()
    far = target.activations(torch.where(pix, target.baseline, target.images), idx).double().numpy()
    base = target.forward(target.baseline).double().numpy()
    clean = target.clean.double().numpy()
    phi_far = np.clip(0.5 * ((far - base) + (clean - keep)), 0, None)
    phi_near = np.clip(0.5 * ((keep - base) + (clean - far)), 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        return phi_far / (phi_far + phi_near)


def evaluate(suite, saes, units) -> dict:
    config = RELATIONS.scene_config
    seed = STREAMS["featureset"]
    target = scene_target(suite.backbone, saes, units, seed, config, "mean", {})
    players = [suite.players(u.image_id) for u in units]
    truth = []
    for unit, phi, masks in zip(units, exact_shapley(target, players), players, strict=True):
        near = torch.from_numpy(neighbourhood(unit.token, target.grid))[None]
        share = distant_share(phi, masks, patches_to_pixels(near, target.grid, target.patch_size)[0, 0].numpy())
        truth.append(bool(share > 0.5) if not np.isnan(share) else False)
    effects = occlusion_effects(target)
    tokens = [u.token for u in units]
    criteria = {
        "occlusion": nonlocality(effects, tokens, target.grid),
        "two_player": two_player_share(target, units),
        "occlusion_radius2": nonlocality(effects, tokens, target.grid, radius=2),
        "two_player_radius2": two_player_share(target, units, radius=2),
    }
    out = {"n_units": len(units), "truth_fraction": float(np.mean(truth))}
    for name, scores in criteria.items():
        out[name] = {str(t): precision_recall(is_nonlocal(scores, t), truth) for t in THRESHOLDS}
    return out


def main() -> None:
    torch.set_num_threads(2)
    started = time.perf_counter()
    suite = load_suite("relations")
    rules = StratifiedRules()
    saes = {layer: suite.saes[layer] for layer in suite.layers}
    images = torch.from_numpy(make_images(STREAMS["featureset"], range(rules.n_pool), RELATIONS.scene_config))
    codes = pool_codes(suite.backbone, saes, images)
    kept = {u.key() for u in suite.units()}
    held_out = [u for layer in suite.layers for u in _candidates(codes, layer, rules)[0] if u.key() not in kept]
    held, mine = evaluate(suite, saes, held_out), evaluate(suite, saes, suite.units())
    configs = [(c, t) for c in held if isinstance(held[c], dict) for t in held[c]]
    best = max(configs, key=lambda ct: min(held[ct[0]][ct[1]]["precision"], held[ct[0]][ct[1]]["recall"]))
    doc = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "suite": suite.name,
        "suite_version": suite.version,
        "held_out": held,
        "suite_units": mine,
        "best_on_held_out": {"criterion": best[0], "threshold": best[1]},
        "wall_s": round(time.perf_counter() - started, 1),
        "provenance": collect("cpu"),
    }
    write_json_atomic(RESULTS / "nonlocality_relations.json", doc)
    print(f"wrote {RESULTS / 'nonlocality_relations.json'} in {doc['wall_s']} s")


if __name__ == "__main__":
    main()
