"""Seeded procedural scenes: a few textured objects on a textured background, with object masks.

Every image is a pure function of ``(seed, image_id)``, so a suite ships only the ids it uses.

>>> scene = make_scene(seed=0, image_id=3)
>>> scene.image.shape, scene.labels.shape
((64, 64, 3), (10,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
TEXTURES = ("solid", "stripes", "dots")
LABEL_NAMES = (
    *(f"has_{s}" for s in SHAPES),
    *(f"has_{c}" for c in COLOURS),
    "same_shape_pair",
    "same_colour_pair",
)
"""Task heads of the ``presence`` task (``tiny``): presence of each shape and colour, and two relational heads
that need two objects."""
RELATION_LABEL_NAMES = (
    *LABEL_NAMES,
    "same_shape_and_colour_pair",
    "red_left_of_blue",
    "at_least_four_objects",
)
"""Task heads of the ``relations`` task: the ``presence`` heads plus heads whose answer needs distant objects
together (a pair alike in shape and colour, a red object left of a blue one, the object count)."""
TASKS = {"presence": LABEL_NAMES, "relations": RELATION_LABEL_NAMES}
"""Task name -> its label names, in the order of the model's outputs."""


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn."""

    size: int = 64
    """Image height and width in pixels."""
    min_objects: int = 2
    """Fewest objects in a scene."""
    max_objects: int = 4
    """Most objects in a scene."""
    min_radius: int = 6
    """Smallest object half-size in pixels."""
    max_radius: int = 10
    """Largest object half-size in pixels."""
    task: str = "presence"
    """Labels drawn with each scene: a key of TASKS (``presence`` for ``tiny``, ``relations``)."""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown scene task {self.task!r}; valid: {', '.join(TASKS)}")


@dataclass(frozen=True)
class Scene:
    """One generated image with its ground truth."""

    image: np.ndarray
    """(H, W, 3) float32 in [0, 1]."""
    masks: np.ndarray
    """(n_objects, H, W) bool, the visible pixels of each object."""
    objects: tuple[dict, ...]
    """Per object: shape, colour, texture, centre (y, x) and radius."""
    labels: np.ndarray
    """(len(LABEL_NAMES),) float32 targets of the training task."""


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        # apex up: inside when below the apex and within the widening sides
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        arm = r * 0.35
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, phase: float) -> np.ndarray:
    """Brightness multiplier in [0.55, 1] for a texture."""
    if texture == "solid":
        return np.ones_like(yy, dtype=np.float32)
    if texture == "stripes":
        return np.where(((xx + yy + phase) // 3) % 2 == 0, 1.0, 0.55).astype(np.float32)
    if texture == "dots":
        return np.where((yy % 4 < 2) & ((xx + phase) % 4 < 2), 0.55, 1.0).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}; valid: {', '.join(TEXTURES)}")


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = rng.uniform(0.25, 0.55, size=3).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.15, 0.45)
    waves = 0.06 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    noise = rng.normal(0.0, 0.03, size=(size, size, 3))
    return (base[None, None, :] + waves[..., None] + noise).astype(np.float32)


def make_scene(seed: int, image_id: int, config: SceneConfig = SceneConfig()) -> Scene:
    """Draw scene ``image_id`` of the stream ``seed`` (deterministic, independent of other ids)."""
    rng = np.random.default_rng([int(seed), int(image_id)])
    size = config.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, size, yy, xx)
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    occupied = np.zeros((size, size), dtype=bool)
    masks, objects = [], []
    for _ in range(n_objects):
        for _attempt in range(50):
            r = float(rng.integers(config.min_radius, config.max_radius + 1))
            cy, cx = rng.uniform(r, size - 1 - r, size=2)
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            mask = _shape_mask(shape, yy, xx, cy, cx, r)
            if not (mask & occupied).any():
                break
        else:
            continue  # no free place left: the scene keeps fewer objects
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        shade = _texture(texture, yy, xx, float(rng.integers(4)))
        rgb = np.asarray(COLOURS[colour], dtype=np.float32)
        image[mask] = (rgb[None, :] * shade[mask][:, None]).astype(np.float32)
        occupied |= mask
        masks.append(mask)
        objects.append(
            {
                "shape": shape,
                "colour": colour,
                "texture": texture,
                "centre": (round(float(cy), 3), round(float(cx), 3)),
                "radius": r,
            }
        )
    return Scene(
        image=np.clip(image, 0.0, 1.0),
        masks=np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool),
        objects=tuple(objects),
        labels=scene_labels(objects, config.task),
    )


def scene_labels(objects, task: str = "presence") -> np.ndarray:
    """Targets of ``task`` (default ``presence``) for a list of object dicts, in the order of TASKS[task]."""
    shapes = [o["shape"] for o in objects]
    colours = [o["colour"] for o in objects]
    labels = [float(s in shapes) for s in SHAPES] + [float(c in colours) for c in COLOURS]
    labels.append(float(len(set(shapes)) < len(shapes)))
    labels.append(float(len(set(colours)) < len(colours)))
    if task == "relations":
        kinds = [(o["shape"], o["colour"]) for o in objects]
        xs = {c: [o["centre"][1] for o in objects if o["colour"] == c] for c in ("red", "blue")}
        labels.append(float(len(set(kinds)) < len(kinds)))
        labels.append(float(bool(xs["red"]) and bool(xs["blue"]) and min(xs["red"]) < max(xs["blue"])))
        labels.append(float(len(objects) >= 4))
    return np.asarray(labels, dtype=np.float32)


def make_images(seed: int, image_ids, config: SceneConfig = SceneConfig()) -> np.ndarray:
    """Stack scenes as a (N, 3, H, W) float32 array in [0, 1]."""
    return np.stack([make_scene(seed, i, config).image.transpose(2, 0, 1) for i in image_ids])
