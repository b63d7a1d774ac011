"""Rebuild an embedded scene suite (``tiny``, ``relations``): train the ViT, train one SAE per layer, freeze the
feature set.

Each stage writes its file and is skipped when the file already exists, so a killed build resumes.
Run it through ``python scripts/build_tiny_suite.py --out DIR`` or ``scripts/build_relations_suite.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cafe_bench.featuresets.builder import FeatureSetRules, build_feature_set, write_feature_set
from cafe_bench.files import write_bytes_atomic, write_json_atomic
from cafe_bench.models import build_backbone
from cafe_bench.sae import build_sae
from cafe_bench.sae.train import SAETrainConfig, train_sae
from cafe_bench.scenes import LABEL_NAMES, TASKS, SceneConfig
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
RELATIONS_SCENES = SceneConfig(min_objects=3, max_objects=5, min_radius=5, max_radius=9, task="relations")
"""Scenes of ``relations``: three to five objects, labels that need distant objects together."""
RELATIONS_MODEL_SPEC = {
    **TINY_MODEL_SPEC,
    "vision_config": {
        **TINY_MODEL_SPEC["vision_config"],
        "output_dim": len(TASKS["relations"]),
        "pool_type": "avg",
    },
}
"""The ``tiny`` architecture with mean pooling over patch tokens, so every token feeds the relational heads."""
STREAMS = {"vit_train": 0, "vit_val": 1, "sae_train": 2, "featureset": 3}
"""Scene seeds of the independent image streams (training, validation, SAE tokens, feature-set pool)."""


def _save_safetensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    write_bytes_atomic(path, save({k: v.detach().contiguous() for k, v in module.state_dict().items()}))


@dataclass(frozen=True)
class SceneSuiteRecipe:
    """What a scene suite is made of: names, architecture, scenes, SAE layers and protocol defaults."""

    name: str
    version: str
    description: str
    model_spec: dict
    scene_config: SceneConfig = SceneConfig()
    layers: tuple = TINY_LAYERS
    protocol: dict = field(default_factory=lambda: {"steps": 16, "baseline": "blur", "blur_sigma": 4.0})


TINY = SceneSuiteRecipe(
    "tiny",
    "1",
    "Embedded suite: an open_clip VisionTransformer trained on procedural scenes, "
    "Matryoshka BatchTopK SAEs on three layers, a frozen feature set.",
    TINY_MODEL_SPEC,
)
RELATIONS = SceneSuiteRecipe(
    "relations",
    "1",
    "Embedded default suite: an open_clip VisionTransformer with mean pooling trained on relational scene labels, "
    "Matryoshka BatchTopK SAEs on three layers, a feature set stratified by locality, exact object-level Shapley "
    "values and greedy oracle curves of every unit.",
    RELATIONS_MODEL_SPEC,
    RELATIONS_SCENES,
    TINY_LAYERS,
    {"steps": 32, "baseline": "mean"},
)


@torch.no_grad()
def collect_patch_tokens(
    backbone, layers, seed: int, n_images: int, batch_size: int = 250, scene_config: SceneConfig = SceneConfig()
) -> dict:
    """Patch-token residuals (N * P, d) after each layer for scenes 0..n_images-1 of stream ``seed``."""
    out = {layer: [] for layer in layers}
    for start in range(0, n_images, batch_size):
        images, _ = scene_batch(seed, range(start, min(n_images, start + batch_size)), scene_config)
        for layer, h in backbone.residuals(images, list(layers)).items():
            out[layer].append(h[:, backbone.n_prefix_tokens :].reshape(-1, h.shape[-1]))
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def build_scene_suite(
    out_dir: Path,
    recipe: SceneSuiteRecipe,
    vit_config: ViTTrainConfig = ViTTrainConfig(),
    sae_config: SAETrainConfig = SAETrainConfig(),
    freeze: Callable | None = None,
    n_sae_images: int = 3000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build every file of the scene suite ``recipe`` into ``out_dir``; return the training report.

    ``freeze(backbone, saes, out_dir, report)`` writes ``features.json`` and any further frozen files and returns
    the names of those further files (they are checksummed in the manifest); None stops after training.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "training_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    torch.manual_seed(seed)
    backbone = build_backbone(recipe.model_spec)
    vit_path = out_dir / "vit.safetensors"
    if vit_path.exists() and "vit" in report:
        backbone = build_backbone(recipe.model_spec, vit_path)
    else:
        report["vit"] = train_vit(
            backbone, vit_config, STREAMS["vit_train"], STREAMS["vit_val"], progress, recipe.scene_config
        )
        _save_safetensors(backbone.visual, vit_path)
        write_json_atomic(report_path, report)
    sae_specs, saes = {}, {}
    tokens = None
    for layer in recipe.layers:
        path = out_dir / f"sae_layer{layer}.safetensors"
        key = f"sae_layer{layer}"
        if not (path.exists() and key in report):
            if tokens is None:
                tokens = collect_patch_tokens(
                    backbone, recipe.layers, STREAMS["sae_train"], n_sae_images, scene_config=recipe.scene_config
                )
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
        saes[layer] = build_sae(sae_specs[str(layer)], path).eval()
    if freeze is None:
        return report
    extra = list(freeze(backbone.eval(), saes, out_dir, report))
    manifest = {
        "name": recipe.name,
        "version": recipe.version,
        "description": recipe.description,
        "model": {**recipe.model_spec, "weights": vit_path.name},
        "saes": sae_specs,
        "scenes": {"config": asdict(recipe.scene_config), "seed": STREAMS["featureset"]},
        "feature_set": "features.json",
        **({"reference": "reference.json"} if "reference.json" in extra else {}),
        "protocol": dict(recipe.protocol),
        "streams": STREAMS,
        "files": {},
    }
    names = [vit_path.name, *(spec["weights"] for spec in sae_specs.values()), "features.json", *extra]
    manifest["files"] = {name: file_sha256(out_dir / name) for name in names}
    write_json_atomic(out_dir / "suite.json", manifest)
    return report


def build_tiny(
    out_dir: Path,
    vit_config: ViTTrainConfig = ViTTrainConfig(),
    sae_config: SAETrainConfig = SAETrainConfig(),
    rules: FeatureSetRules = FeatureSetRules(),
    n_sae_images: int = 3000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build every file of the tiny suite into ``out_dir`` and return the training report."""

    def freeze(backbone, saes, out, _report):
        features = build_feature_set(backbone, saes, STREAMS["featureset"], rules, progress=progress)
        write_feature_set(out / "features.json", features)
        return []

    return build_scene_suite(out_dir, TINY, vit_config, sae_config, freeze, n_sae_images, seed, progress)
