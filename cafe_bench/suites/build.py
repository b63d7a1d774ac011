"""Rebuild the embedded ``tiny`` suite: train the ViT, train one SAE per layer, freeze the feature set.

Each stage writes its file and is skipped when the file already exists, so a killed build resumes.
Run it through ``python scripts/build_tiny_suite.py --out DIR`` (see ``--help``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from cafe_bench.featuresets.builder import FeatureSetRules, build_feature_set, write_feature_set
from cafe_bench.files import write_bytes_atomic, write_json_atomic
from cafe_bench.models import build_backbone
from cafe_bench.sae import build_sae
from cafe_bench.sae.train import SAETrainConfig, train_sae
from cafe_bench.scenes import LABEL_NAMES, SceneConfig
from cafe_bench.suites.manifest import file_sha256
from cafe_bench.training import ViTTrainConfig, scene_batch, train_vit

TINY_MODEL_SPEC = {
    "library": "open_clip",
    "vision_config": {
        "image_size": 64,
        "patch_size": 8,
        "width": 64,
        "layers": 6,
        "heads": 4,
        "mlp_ratio": 4.0,
        "output_dim": len(LABEL_NAMES),
    },
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
TINY_LAYERS = (1, 3, 5)
STREAMS = {"vit_train": 0, "vit_val": 1, "sae_train": 2, "featureset": 3}
"""Scene seeds of the independent image streams (training, validation, SAE tokens, feature-set pool)."""


def _save_safetensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    write_bytes_atomic(path, save({k: v.detach().contiguous() for k, v in module.state_dict().items()}))


@torch.no_grad()
def collect_patch_tokens(backbone, layers, seed: int, n_images: int, batch_size: int = 250) -> dict:
    """Patch-token residuals (N * P, d) after each layer for scenes 0..n_images-1 of stream ``seed``."""
    out = {layer: [] for layer in layers}
    for start in range(0, n_images, batch_size):
        images, _ = scene_batch(seed, range(start, min(n_images, start + batch_size)))
        for layer, h in backbone.residuals(images, list(layers)).items():
            out[layer].append(h[:, backbone.n_prefix_tokens :].reshape(-1, h.shape[-1]))
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def build_tiny(
    out_dir: Path,
    vit_config: ViTTrainConfig = ViTTrainConfig(),
    sae_config: SAETrainConfig = SAETrainConfig(),
    rules: FeatureSetRules = FeatureSetRules(),
    n_sae_images: int = 3000,
    layers=TINY_LAYERS,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build every file of the tiny suite into ``out_dir`` and return the training report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    torch.manual_seed(seed)
    backbone = build_backbone(TINY_MODEL_SPEC)
    vit_path = out_dir / "vit.safetensors"
    if vit_path.exists() and "vit" in report:
        backbone = build_backbone(TINY_MODEL_SPEC, vit_path)
    else:
        report["vit"] = train_vit(backbone, vit_config, STREAMS["vit_train"], STREAMS["vit_val"], progress)
        _save_safetensors(backbone.visual, vit_path)
        write_json_atomic(report_path, report)
    sae_specs, saes = {}, {}
    tokens = None
    for layer in layers:
        path = out_dir / f"sae_layer{layer}.safetensors"
        key = f"sae_layer{layer}"
        if not (path.exists() and key in report):
            if tokens is None:
                tokens = collect_patch_tokens(backbone, layers, STREAMS["sae_train"], n_sae_images)
            sae, metrics = train_sae(tokens[layer], sae_config, seed=seed + layer, progress=progress)
            _save_safetensors(sae, path)
            report[key] = metrics
            write_json_atomic(report_path, report)
        d_in = backbone.width
        d_sae = sae_config.expansion * d_in
        sae_specs[str(layer)] = {
            "kind": "matryoshka_batchtopk",
            "d_in": d_in,
            "d_sae": d_sae,
            "k": sae_config.k,
            "group_sizes": [d_sae // 2**i for i in reversed(range(sae_config.n_groups))],
            "weights": path.name,
        }
        saes[layer] = build_sae(sae_specs[str(layer)], path)
    features = build_feature_set(backbone, saes, STREAMS["featureset"], rules, progress=progress)
    write_feature_set(out_dir / "features.json", features)
    manifest = {
        "name": "tiny",
        "version": "1",
        "description": "Embedded suite: an open_clip VisionTransformer trained on procedural scenes, "
        "Matryoshka BatchTopK SAEs on three layers, a frozen feature set.",
        "model": {**TINY_MODEL_SPEC, "weights": vit_path.name},
        "saes": sae_specs,
        "scenes": {"config": asdict(SceneConfig()), "seed": STREAMS["featureset"]},
        "feature_set": "features.json",
        "protocol": {"steps": 16, "baseline": "blur", "blur_sigma": 4.0},
        "streams": STREAMS,
        "files": {},
    }
    names = [vit_path.name, *(spec["weights"] for spec in sae_specs.values()), "features.json"]
    manifest["files"] = {name: file_sha256(out_dir / name) for name in names}
    write_json_atomic(out_dir / "suite.json", manifest)
    return report
