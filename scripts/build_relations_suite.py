"""Rebuild the embedded default suite ``relations`` (ViT, SAEs, stratified feature set, reference, manifest).

    python scripts/build_relations_suite.py --out cafe_bench/suites/relations

A killed build resumes: finished stages (listed in training_report.json, or written files) are kept.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from cafe_bench.sae.train import SAETrainConfig
from cafe_bench.suites.build import RELATIONS, build_scene_suite
from cafe_bench.suites.relations_build import StratifiedRules, make_freeze
from cafe_bench.training import ViTTrainConfig

VIT = ViTTrainConfig(epochs=8)
"""The relational heads need more passes than ``tiny``'s six."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="suite directory to write")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny budgets (for tests)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (default 2; the shipped files were built with 2)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vit, sae, rules, n_sae_images = VIT, SAETrainConfig(), StratifiedRules(), 3000
    recipe = RELATIONS
    if args.smoke:
        vit = replace(vit, n_train=256, n_val=64, epochs=1, batch_size=64)
        sae = replace(sae, steps=20, batch_size=256)
        rules = replace(rules, n_pool=24, n_candidates=3, n_features=2, min_images=1, min_token_frequency=0.0)
        n_sae_images = 32
        small = {**recipe.model_spec["vision_config"], "image_size": 32, "layers": 4}
        scenes = replace(recipe.scene_config, size=32, min_radius=3, max_radius=5)
        recipe = replace(recipe, model_spec={**recipe.model_spec, "vision_config": small}, scene_config=scenes)
        recipe = replace(recipe, layers=(1, 3))
    freeze = make_freeze(recipe, rules)
    report = build_scene_suite(args.out, recipe, vit, sae, freeze, n_sae_images=n_sae_images)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
