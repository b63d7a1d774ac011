"""Train the embedded ViT on the scene task (presence heads plus two relational heads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_bench.scenes import TASKS, SceneConfig, make_scene


@dataclass(frozen=True)
class ViTTrainConfig:
    """Hyper-parameters of the task training."""

    n_train: int = 40000
    """Training scenes (ids 0..n_train-1 of the training stream)."""
    n_val: int = 2000
    """Validation scenes (a separate stream)."""
    epochs: int = 6
    """Passes over the training scenes."""
    batch_size: int = 128
    """Scenes per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (cosine decay, 5% warm-up)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""


def scene_batch(seed: int, ids, scene_config: SceneConfig = SceneConfig()):
    """(images (N,3,H,W) float32 in [0,1], labels (N, n_labels)) for scene ids of a stream."""
    scenes = [make_scene(seed, i, scene_config) for i in ids]
    images = np.stack([s.image.transpose(2, 0, 1) for s in scenes])
    return torch.from_numpy(images), torch.from_numpy(np.stack([s.labels for s in scenes]))


def _logits(backbone, images):
    """Task logits of an open_clip tower wrapped in a backbone (its own pooling and projection)."""
    v = backbone.visual
    x = backbone.residuals(images, [backbone.n_blocks - 1])[backbone.n_blocks - 1]
    pooled, _ = v._global_pool(v.ln_post(x))
    return pooled @ v.proj


@torch.no_grad()
def evaluate(backbone, images, labels, batch_size: int = 500, task: str = "presence") -> dict:
    """Per-head and mean accuracy of thresholded logits of ``task`` (default ``presence``), and the
    majority-class accuracy to beat."""
    backbone.eval()
    preds = torch.cat([_logits(backbone, images[i : i + batch_size]) > 0 for i in range(0, len(images), batch_size)])
    per_head = (preds == (labels > 0.5)).float().mean(0)
    rate = (labels > 0.5).float().mean(0)  # accuracy of always guessing the majority class, per head
    return {
        "mean_accuracy": round(float(per_head.mean()), 4),
        "per_head": {n: round(float(a), 4) for n, a in zip(TASKS[task], per_head, strict=True)},
        "majority_class_accuracy": round(float(torch.maximum(rate, 1 - rate).mean()), 4),
    }


def train_vit(
    backbone,
    config: ViTTrainConfig,
    train_seed: int,
    val_seed: int,
    progress: bool = True,
    scene_config: SceneConfig = SceneConfig(),
) -> dict:
    """Train ``backbone`` (an OpenClipBackbone with output_dim = the number of labels of ``scene_config.task``)
    in place on scenes drawn with ``scene_config`` (default: the ``tiny`` scenes); return metrics."""
    torch.manual_seed(train_seed)
    images, labels = scene_batch(train_seed, range(config.n_train), scene_config)
    val_images, val_labels = scene_batch(val_seed, range(config.n_val), scene_config)
    task = scene_config.task
    params = backbone.visual.parameters()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = config.n_train // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(train_seed)
    bar = tqdm(total=total, desc="vit", disable=not progress)
    for _ in range(config.epochs):
        backbone.train()
        order = torch.randperm(config.n_train, generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(_logits(backbone, images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if progress:
            bar.write(f"epoch val {evaluate(backbone, val_images, val_labels, task=task)['mean_accuracy']}")
    bar.close()
    backbone.eval()
    return {
        **evaluate(backbone, val_images, val_labels, task=task),
        "config": asdict(config),
        "train_seed": train_seed,
        "val_seed": val_seed,
        "torch_threads": torch.get_num_threads(),
    }
