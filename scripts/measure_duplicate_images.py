"""How often two curves of the default run need the same perturbed image: for every layer, the interior steps (mask
neither empty nor full) of every method x protocol x unit, and how many of them show an image (the same patches of
the same clean image) that another curve of the layer already needs; and how many repeat across layers. Writes
``benchmarks/results/duplicate_images_relations.json`` (the README's engine paragraph rests on it).

    python scripts/measure_duplicate_images.py [--suite NAME] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from cafe_bench.attributors.registry import get_attributor
from cafe_bench.protocols.engine import step_counts, step_masks
from cafe_bench.protocols.registry import DEFAULT_PROTOCOLS, get_protocol
from cafe_bench.runner import DEFAULT_METHODS
from cafe_bench.suites import load_suite


def shown_images(suite, layer: int) -> list[tuple]:
    """(image id, bytes of the shown-patch mask) of every interior step of every default curve on ``layer``."""
    target = suite.target(suite.units([layer]))
    counts = step_counts(target.n_patches, suite.protocol_defaults["steps"])
    interior = [i for i, c in enumerate(counts) if 0 < c < target.n_patches]
    out = []
    for method in DEFAULT_METHODS:
        scores = get_attributor(method).scores(target).reshape(len(target), -1)
        for name in DEFAULT_PROTOCOLS:
            protocol = get_protocol(name)
            taken = step_masks(scores, counts, protocol.order)[:, interior]  # (B, S', P)
            shown = taken if protocol.start == "baseline" else ~taken
            for u, unit in enumerate(target.units):
                out += [(unit.image_id, row.numpy().tobytes()) for row in shown[u]]
    return out


def measure(suite_name: str) -> dict:
    suite = load_suite(suite_name)
    layers, distinct_per_layer = {}, []
    for layer in suite.layers:
        images = shown_images(suite, layer)
        distinct_per_layer.append(set(images))
        layers[str(layer)] = {
            "interior_images": len(images),
            "distinct": len(set(images)),
            "repeated_share": round(1 - len(set(images)) / len(images), 4),
        }
    within = sum(len(d) for d in distinct_per_layer)
    return {
        "suite": suite_name,
        "steps": suite.protocol_defaults["steps"],
        "methods": list(DEFAULT_METHODS),
        "protocols": list(DEFAULT_PROTOCOLS),
        "layers": layers,
        "distinct_within_layers": within,
        "repeated_across_layers": within - len(set().union(*distinct_per_layer)),
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="relations", help="suite (default: relations)")
    parser.add_argument("--out", default="benchmarks/results/duplicate_images_relations.json", help="the JSON")
    args = parser.parse_args()
    doc = measure(args.suite)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
