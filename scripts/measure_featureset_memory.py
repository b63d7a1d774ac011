"""Measure the peak memory of the streaming feature-set builder against holding every SAE code in memory.

:func:`cafe_bench.featuresets.stream.build_feature_set_stream` reads the images once and keeps only running
statistics, encoding at most ``CHUNK_CODES`` codes at a time. Holding all codes instead would take
``N images x P patches x d_sae x 4`` bytes (float32). Each build runs in a fresh Python process. The model and the
SAE are built first; every weight is read once (a safetensors SAE is memory-mapped, and paging it in is not the
builder's cost) and freed heap memory is given back to the kernel (glibc ``malloc_trim``; otherwise memory freed
while the model was built would be reused by the build unseen). Then the peak resident set size is reset to the
current one (``/proc/self/clear_refs``) and read back (``VmHWM`` in ``/proc/self/status``) after the build: the
difference is the memory the build itself took on top of the weights (RSS growth). Each setup is built
``--repeats`` times (default 3), as the peak moves a little from run to run; the largest growth is the one
reported first.

Two setups:

* ``synthetic`` (as in the bounded-memory test of ``tests/test_featureset_stream.py``): a backbone that averages
  each 4 x 4 patch of a 16 x 16 image (4 x 4 = 16 patches, width 4, one identity block), random images made on the
  fly, a standard SAELens SAE of d_in 4 at several dictionary widths, batch 8. The forward pass costs nothing, so
  the growth is the builder's own working set.
* ``vit_b32``: a random-weight ``open_clip:ViT-B-32`` (224 pixels, 7 x 7 = 49 patches) and a random top-k SAELens
  SAE (d_in 768, d_sae 65536, k 32) after block 6, over generated PNG images in a temporary folder.

Linux only (``/proc``). Example::

    python scripts/measure_featureset_memory.py --out benchmarks/results/featureset_memory.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cafe_bench.files import write_json_atomic
from cafe_bench.provenance import machine_facts
from cafe_bench.synthetic import PatchMeanBackbone

MIB = 2**20
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "featureset_memory.json"
SYNTHETIC = {
    "n_images": 512,
    "image_side": 16,
    "patch_size": 4,
    "batch_size": 8,
    "per_layer": 8,
    "images_per_feature": 4,
}
SYNTHETIC_WIDTHS = (16384, 65536, 131072)
VIT = {
    "model": "open_clip:ViT-B-32",
    "pretrained": "none",
    "layer": 6,
    "d_sae": 65536,
    "k": 32,
    "n_images": 48,
    "batch_size": 8,
    "per_layer": 8,
    "images_per_feature": 2,
}


# -- measuring in the child process ---------------------------------------------------------------------------


def peak_rss() -> int:
    """VmHWM in bytes (ru_maxrss would keep the peak of the parent that forked this process)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))


def rss_parts() -> dict:
    """Current VmRSS, RssAnon and RssFile in bytes."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "RssAnon", "RssFile") if key in fields}


@torch.no_grad()
def page_in(modules) -> None:
    """Read every parameter and buffer once: safetensors files are memory-mapped, and their pages would otherwise
    be read in during the build and counted as its growth, although any use of the weights needs them."""
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.detach().sum()


def trim_heap() -> bool:
    """Give freed heap memory back to the kernel (glibc ``malloc_trim``), so that memory freed while the model was
    built cannot be reused by the build unseen; False where there is no glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def reset_peak() -> bool:
    """Set the peak RSS to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measured_build(backbone, saes, source, rules, batch_size: int) -> dict:
    """Build the feature set with the weights paged in and the peak reset just before; RSS figures in bytes."""
    from cafe_bench.featuresets.stream import build_feature_set_stream

    page_in([backbone, *saes.values()])
    trimmed = trim_heap()
    parts_before = rss_parts()
    reset = reset_peak()
    before = peak_rss()
    started, cpu_started = time.perf_counter(), time.process_time()
    doc = build_feature_set_stream(backbone, saes, source, rules, batch_size=batch_size, progress=False)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after = peak_rss()
    parts_after = rss_parts()
    return {
        "peak_reset": reset,
        "heap_trimmed": trimmed,
        "rss_before_build": before,
        "rss_parts_before_build": parts_before,
        "rss_parts_after_build": parts_after,
        "peak_rss_during_build": after,
        "rss_growth": after - before,
        "build_wall_s": wall,
        "build_cpu_s": cpu,
        "n_images": doc["n_images"],
        "n_patches": doc["n_patches"],
        "n_units": len(doc["units"]),
        "layers": doc["layers"],
        "torch_threads": torch.get_num_threads(),
    }


def random_image_source(n_images: int, side: int):
    """``n_images`` random (3, side, side) images, each made from its index when loaded (never stored together)."""
    from cafe_bench.images import ImageSource

    def make(i: int) -> np.ndarray:
        return np.random.default_rng(i).random((3, side, side), dtype=np.float32)

    class RandomImages(ImageSource):
        kind = "random"

        def ids(self):
            return list(range(n_images))

        def _load_one(self, image_id, preprocess):
            return make(int(image_id))

        def sha256s(self, image_ids):
            return [hashlib.sha256(make(int(i)).tobytes()).hexdigest() for i in image_ids]

    return RandomImages()


def child_synthetic(d_sae: int) -> dict:
    from cafe_bench.featuresets.stream import SelectionRules
    from cafe_bench.sae.formats.saelens import SAELensSAE

    cfg = SYNTHETIC
    g = torch.Generator().manual_seed(0)
    tensors = {
        "W_enc": torch.randn(4, d_sae, generator=g),
        "b_enc": torch.linspace(-2.0, 0.0, d_sae),
        "W_dec": torch.randn(d_sae, 4, generator=g),
        "b_dec": torch.zeros(4),
    }
    sae = SAELensSAE("standard", tensors)
    grid = cfg["image_side"] // cfg["patch_size"]
    backbone = PatchMeanBackbone(cfg["patch_size"], (grid, grid))
    source = random_image_source(cfg["n_images"], cfg["image_side"])
    rules = SelectionRules(per_layer=cfg["per_layer"], images_per_feature=cfg["images_per_feature"])
    return measured_build(backbone, {0: sae}, source, rules, cfg["batch_size"])


def child_vit(sae_dir: str, images_dir: str) -> dict:
    from cafe_bench.featuresets.stream import SelectionRules
    from cafe_bench.images import FolderSource
    from cafe_bench.models import load_backbone
    from cafe_bench.sae import load_sae

    cfg = VIT
    backbone = load_backbone(cfg["model"], cfg["pretrained"])
    sae = load_sae(sae_dir).eval()
    source = FolderSource(images_dir)
    rules = SelectionRules(per_layer=cfg["per_layer"], images_per_feature=cfg["images_per_feature"])
    weights = sum(t.numel() * t.element_size() for m in (backbone, sae) for t in (*m.parameters(), *m.buffers()))
    result = measured_build(backbone, {cfg["layer"]: sae}, source, rules, cfg["batch_size"])
    result["weights_bytes"] = weights
    result["image_size"] = list(backbone.image_size)
    return result


# -- the parent: set up, run each build in its own process, record ----------------------------------------------


def run_child(*args: str, env: dict | None = None) -> dict:
    """One measured build in a fresh Python process (this script with ``--child``); its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800, env={**os.environ, **(env or {})})
    if run.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def one_run(child: dict) -> dict:
    """One build's figures in MiB."""
    return {
        "rss_growth_mib": child["rss_growth"] / MIB,
        "rss_before_build_mib": child["rss_before_build"] / MIB,
        "peak_rss_during_build_mib": child["peak_rss_during_build"] / MIB,
        "rss_parts_before_build_mib": {k: v / MIB for k, v in child["rss_parts_before_build"].items()},
        "rss_parts_after_build_mib": {k: v / MIB for k, v in child["rss_parts_after_build"].items()},
        "peak_reset": child["peak_reset"],
        "heap_trimmed": child["heap_trimmed"],
        "build_wall_s": child["build_wall_s"],
        "build_cpu_s_per_wall_s": child["build_cpu_s"] / child["build_wall_s"],
    }


def summarise(children: list[dict], d_sae: int) -> dict:
    """Repeated builds of one setup: the largest RSS growth (the headline), its median and every run, the size of
    all codes and their ratio."""
    first = children[0]
    if not all(c["peak_reset"] for c in children):
        raise RuntimeError(
            "the peak RSS cannot be reset here (/proc/self/clear_refs): the build's peak is not measurable"
        )
    all_codes = first["n_images"] * first["n_patches"] * d_sae * 4
    growths = [c["rss_growth"] for c in children]
    worst = max(growths)
    out = {
        "d_sae": d_sae,
        "n_images": first["n_images"],
        "n_patches": first["n_patches"],
        "all_codes_mib": all_codes / MIB,
        "n_runs": len(children),
        "rss_growth_mib": worst / MIB,
        "rss_growth_mib_median": statistics.median(growths) / MIB,
        "rss_growth_mib_runs": [g / MIB for g in growths],
        "growth_over_all_codes": worst / all_codes,
        "all_codes_over_growth": all_codes / worst if worst > 0 else None,
        "build_wall_s_median": statistics.median(c["build_wall_s"] for c in children),
        "n_units": first["n_units"],
        "torch_threads": first["torch_threads"],
        "layers": first["layers"],
        "runs": [one_run(c) for c in children],
    }
    if "weights_bytes" in first:
        out["weights_mib"] = first["weights_bytes"] / MIB
        out["image_size"] = first["image_size"]
    return out


def write_vit_inputs(folder: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """The random top-k SAE (SAELens format) and ``n_images`` generated 256 x 256 PNGs under ``folder``."""
    from PIL import Image

    from cafe_bench.sae.formats.saelens import save_saelens

    cfg = VIT
    g = torch.Generator().manual_seed(seed)
    d_in, d_sae = 768, cfg["d_sae"]
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.zeros(d_in),
    }
    hook = f"blocks.{cfg['layer']}.hook_resid_post"
    sae_dir = save_saelens(folder / "sae", "topk", tensors, k=cfg["k"], hook_name=hook)
    del tensors
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    for i in range(n_images):  # smooth colour gradients with a bright disc and noise: images that differ
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        base = np.stack([xx * rng.uniform(), yy * rng.uniform(), (1 - xx) * rng.uniform()], axis=-1)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += rng.uniform(0.3, 0.7, 3)
        base += rng.normal(0, 0.05, base.shape)
        Image.fromarray((base.clip(0, 1) * 255).astype(np.uint8)).save(images / f"img{i:03d}.png")
    return sae_dir, images


def fmt(values) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def measure(widths, vit_images: int, repeats: int) -> dict:
    from cafe_bench.featuresets.stream import CHUNK_CODES

    machine = machine_facts()
    synthetic = []
    for d_sae in widths:
        row = summarise([run_child("synthetic", str(d_sae)) for _ in range(repeats)], d_sae)
        synthetic.append(row)
        print(
            f"synthetic d_sae {d_sae}: RSS growth {row['rss_growth_mib']:.0f} MiB, all codes "
            f"{row['all_codes_mib']:.0f} MiB ({row['all_codes_over_growth']:.1f}x; "
            f"runs {fmt(row['rss_growth_mib_runs'])}), "
            f"build {row['build_wall_s_median']:.1f} s",
            flush=True,
        )
    vit = None
    if vit_images > 0:
        with tempfile.TemporaryDirectory() as folder:
            sae_dir, images = write_vit_inputs(Path(folder), vit_images)
            env = {"CAFE_BENCH_CACHE": str(Path(folder) / "cache")}  # image hashes: not in the user's cache
            children = [run_child("vit", str(sae_dir), str(images), env=env) for _ in range(repeats)]
            vit = summarise(children, VIT["d_sae"])
        print(
            f"{VIT['model']} + top-k SAE d_sae {VIT['d_sae']}, {vit['n_images']} images: RSS growth "
            f"{vit['rss_growth_mib']:.0f} MiB, all codes {vit['all_codes_mib']:.0f} MiB "
            f"({vit['all_codes_over_growth']:.1f}x; runs {fmt(vit['rss_growth_mib_runs'])}), "
            f"build {vit['build_wall_s_median']:.1f} s",
            flush=True,
        )
    machine["load_average_1_5_15_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "what": (
            "peak RSS growth of build_feature_set_stream (one process per build, peak reset after the model and SAE "
            "are built) vs the size of all float32 codes N x P x d_sae x 4 bytes"
        ),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "config": {
            "chunk_codes": CHUNK_CODES,
            "measure": (
                "every weight of the model and SAE read once (safetensors files are memory-mapped) and freed heap "
                "memory given back (glibc malloc_trim(0)), then "
                "rss_growth = VmHWM after the build - VmHWM reset (/proc/self/clear_refs 5) just before it; "
                "all_codes = n_images * n_patches * d_sae * 4 bytes; MiB = 2**20 bytes; each setup is built "
                f"{repeats} times, each in a fresh process: rss_growth_mib is the largest growth, "
                "rss_growth_mib_runs every one (the allocator's reuse of freed blocks varies from run to run); "
                "build_cpu_s_per_wall_s is the process's CPU time over the build's wall time (about torch_threads "
                "when the cores were free, lower when other jobs shared them: the wall times then overstate)"
            ),
            "synthetic": {
                **SYNTHETIC,
                "widths": list(widths),
                "backbone": "patch means (width 4, one identity block), 16 patches, CLS token dropped",
                "sae": "SAELens standard, d_in 4, W_enc randn, b_enc linspace(-2, 0), seed 0",
                "images": "numpy default_rng(i).random((3, 16, 16)), made when loaded",
                "rules": "SelectionRules(per_layer=8, images_per_feature=4), other fields default",
            },
            "vit_b32": None
            if vit is None
            else {
                **VIT,
                "n_images": vit_images,
                "sae": "SAELens topk, d_in 768, W_enc randn / sqrt(768), b_enc 0, W_dec randn / sqrt(d_sae), seed 0",
                "images": "generated 256 x 256 PNGs (gradients, a disc, noise) in a temporary folder (FolderSource)",
                "rules": "SelectionRules(per_layer=8, images_per_feature=2), other fields default",
            },
        },
        "synthetic": synthetic,
        "vit_b32": vit,
        "machine": machine,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON to write (default {DEFAULT_OUT})")
    parser.add_argument(
        "--widths", default=",".join(map(str, SYNTHETIC_WIDTHS)), help="comma-separated d_sae of the synthetic builds"
    )
    parser.add_argument(
        "--vit-images",
        type=int,
        default=VIT["n_images"],
        help=f"images of the ViT-B-32 build, 0 skips it (default {VIT['n_images']})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="builds of each setup, each in a fresh process")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one measured build, in this fresh process; prints its figures as one JSON line
        kind, *rest = args.child
        result = child_synthetic(int(rest[0])) if kind == "synthetic" else child_vit(*rest)
        print(json.dumps(result))
        return 0
    if not sys.platform.startswith("linux"):
        parser.error("needs Linux: the peak RSS is read from /proc")
    started = time.perf_counter()
    widths = [int(s) for s in args.widths.split(",") if s.strip()]
    result = measure(widths, args.vit_images, args.repeats)
    result["script_wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out} in {result['script_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
