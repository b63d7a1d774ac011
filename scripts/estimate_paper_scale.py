"""What the paper's setting costs: 24 layers x 100 features x 10 images x 10 methods x 2 protocols on CLIP
ViT-L/14 at 224 px (16 x 16 patches, 257 tokens, width 1024), into benchmarks/results/paper_scale.json (read by
scripts/update_readme.py).

    python scripts/estimate_paper_scale.py [--steps 32] [--batch 8] [--gpu-tflops 300] [--gpu-memory-gib 80]

Counted: forward passes (each to the SAE's block only) of the curves, (S - 1) per unit, method and protocol (the
two endpoints are shared), and of the attributions, each method's declared forward and backward passes per unit
(a backward pass counted as two forwards); FLOPs of a forward pass to block L by the usual transformer count,
2 n (12 d^2) + 4 n^2 d per block (n tokens, width d), patch embedding included. Measured here: the CPU
throughput of ViT-L/14 (random weights, open_clip) to blocks 8 and 22 at ``--batch``, with which the CPU time is
extrapolated. No GPU is measured: the GPU-hours rest on an assumed sustained throughput (``--gpu-tflops``,
default 300 TFLOP/s: about a third of an H100's dense bf16 peak) and say so. The forward batch comes from the
engine's own memory model (``cafe_bench.memory``) for a GPU of ``--gpu-memory-gib``.
"""

import argparse
import time
from pathlib import Path

import torch

from cafe_bench.attributors.registry import get_attributor
from cafe_bench.files import write_json_atomic
from cafe_bench.memory import CPU_WORKING_SET, bytes_per_image, images_per_batch
from cafe_bench.models import load_backbone
from cafe_bench.provenance import collect
from cafe_bench.runner import DEFAULT_METHODS

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
LAYERS, FEATURES, IMAGES, PROTOCOLS = 24, 100, 10, 2


def flops_to_block(layer: int, n: int = 257, d: int = 1024, patch: int = 14, grid: int = 16) -> float:
    """FLOPs of one image's forward pass through blocks 0..layer (plus the patch embedding)."""
    embed = 2 * grid * grid * (3 * patch * patch) * d
    return embed + (layer + 1) * (2 * n * 12 * d * d + 4 * n * n * d)


@torch.no_grad()
def measure(backbone, layer: int, batch: int, rounds: int = 2) -> float:
    """Images per second through blocks 0..layer at ``batch`` (best of ``rounds`` after a warm-up)."""
    images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    backbone.residuals(images[:1], [layer])
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        backbone.residuals(images, [layer])
        best = min(best, time.perf_counter() - t0)
    return batch / best


def memory_model(backbone, gpu_gib: float) -> dict:
    """The engine's memory model (``cafe_bench.memory``) for ViT-L/14: bytes per image at the deepest block (in the
    weights' dtype, fp32; the engine keeps that batch under bf16 autocast too) and the forward batch it gives on a GPU
    of ``gpu_gib`` (80 % of it, the default budget of an idle device) and on CPU (the default working set)."""
    per_image = bytes_per_image(backbone, LAYERS - 1, tokens=True)
    gpu_budget = int(0.8 * gpu_gib * 2**30)
    return {
        "bytes_per_image_fp32": per_image,
        "gpu_memory_gib": gpu_gib,
        "gpu_budget_bytes": gpu_budget,
        "gpu_images_per_batch_fp32": images_per_batch(backbone, LAYERS - 1, True, gpu_budget),
        "cpu_budget_bytes": CPU_WORKING_SET,
        "cpu_images_per_batch_fp32": images_per_batch(backbone, LAYERS - 1, True, CPU_WORKING_SET),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32, help="curve steps (default 32, as suites/clip-vit-l14.toml)")
    parser.add_argument("--batch", type=int, default=8, help="images per measured forward pass (default 8)")
    parser.add_argument("--gpu-tflops", type=float, default=300.0, help="assumed sustained GPU TFLOP/s (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="GPU memory for the batch size (default 80)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_patches = 256
    units = LAYERS * FEATURES * IMAGES  # each unit at one layer; layers 0..23 equally
    mean_flops = sum(flops_to_block(layer) for layer in range(LAYERS)) / LAYERS
    methods = {}
    for name in DEFAULT_METHODS:
        cost = get_attributor(name).cost(n_patches)
        methods[name] = {"forward": cost.forward, "backward": cost.backward}
    attribution_passes = units * sum(c["forward"] + 2 * c["backward"] for c in methods.values())
    curve_passes = units * len(methods) * PROTOCOLS * (args.steps - 1)
    passes = attribution_passes + curve_passes
    total_flops = passes * mean_flops
    backbone = load_backbone("open_clip:ViT-L-14", pretrained="none").eval()
    started = time.perf_counter()
    throughput = {str(layer): measure(backbone, layer, args.batch) for layer in (8, 22)}
    # the CPU's sustained FLOP/s at block 22, applied to the whole workload
    cpu_flops = throughput["22"] * flops_to_block(22)
    doc = {
        "what": "cost of 24 layers x 100 features x 10 images x 10 methods x 2 protocols on CLIP ViT-L/14, 224 px",
        "workload": {
            "layers": LAYERS,
            "features_per_layer": FEATURES,
            "images_per_feature": IMAGES,
            "methods": methods,
            "protocols": PROTOCOLS,
            "steps": args.steps,
            "units": units,
        },
        "forward_passes": {"attribution": attribution_passes, "curves": curve_passes, "total": passes},
        "flops": {"per_forward_mean": mean_flops, "per_forward_block22": flops_to_block(22), "total": total_flops},
        "cpu": {
            "measured_images_per_s": {k: round(v, 3) for k, v in throughput.items()},
            "batch": args.batch,
            "sustained_gflops": round(cpu_flops / 1e9, 1),
            "hours": round(total_flops / cpu_flops / 3600, 1),
            "measured": True,
        },
        "gpu": {
            "assumed_tflops": args.gpu_tflops,
            "hours": round(total_flops / (args.gpu_tflops * 1e12) / 3600, 1),
            "measured": False,
            "note": "no GPU measured; the hours assume this sustained throughput",
        },
        "memory": memory_model(backbone, args.gpu_memory_gib),
        "measure_s": round(time.perf_counter() - started, 1),
        "provenance": collect("cpu"),
    }
    write_json_atomic(RESULTS / "paper_scale.json", doc)
    print(f"wrote {RESULTS / 'paper_scale.json'}: {passes:.3g} forward passes, {total_flops:.3g} FLOPs")


if __name__ == "__main__":
    main()
