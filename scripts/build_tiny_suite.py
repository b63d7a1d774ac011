"""Rebuild the embedded tiny suite (ViT, SAEs, feature set, manifest) from seeds.

    python scripts/build_tiny_suite.py --out cafe_bench/suites/tiny

A killed build resumes: finished stages (listed in training_report.json) are kept.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from cafe_bench.featuresets.builder import FeatureSetRules
from cafe_bench.sae.train import SAETrainConfig
from cafe_bench.suites.build import build_tiny
from cafe_bench.training import ViTTrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="suite directory to write")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run with tiny budgets (for tests)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (default 2; the shipped files were built with 2)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vit, sae, rules = ViTTrainConfig(), SAETrainConfig(), FeatureSetRules()
    n_sae_images = 3000
    if args.smoke:
        vit = replace(vit, n_train=256, n_val=64, epochs=1, batch_size=64)
        sae = replace(sae, steps=20, batch_size=256)
        rules = replace(rules, n_pool=32, n_features=2, n_images=2, min_images=1, min_token_frequency=0.0)
        n_sae_images = 32
    report = build_tiny(args.out, vit, sae, rules, n_sae_images=n_sae_images)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
