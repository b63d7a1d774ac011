"""Real colour photographs shipped inside installed wheels: read from disk, never downloaded.

Twelve photographs: nine from scikit-image's ``skimage/data`` (the files its ``skimage.data`` functions return when
they are present in the wheel; the functions themselves are not called, as some fall back to a network fetch),
two from scikit-learn (``load_sample_image``) and one from matplotlib (``get_sample_data``). Each is RGB with real
chroma; sizes run from 451x300 (chelsea) to 1411x1411 (retina).

:class:`PhotosSource` (kind ``photos``) names an image ``NAME`` (the photo as it is) or ``NAME@VIEW``, a fixed
geometric view cut from the full photo before the model's preprocessing (shorter side resized, centre crop):

=========  ==============================================================================
centre     the photo unchanged (id ``NAME``)
flip       mirrored left-right
crop-tl    square of 0.6 x the shorter side in the top-left corner (-tr, -bl, -br alike)
zoom       square of 0.4 x the shorter side at the centre
=========  ==============================================================================

A view's geometry never changes under its name, so an image's SHA-256 is that of ``"<file sha256>@<view>"``.

>>> source = PhotosSource(views=("centre", "flip"))
>>> source.ids()[:3]  # ['astronaut', 'astronaut@flip', 'chelsea']
>>> images = source.load(source.ids()[:4], backbone.preprocess)  # (4, 3, H, W) in [0, 1]
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from cafe_bench.errors import CafeBenchError, UnknownNameError
from cafe_bench.images import ImageSource, ImageSourceError, register_image_source, to_model_input

__all__ = ["PHOTOS", "VIEWS", "Photo", "PhotosSource", "View", "open_photo", "photo_path", "training_crops"]

_INSTALL_HINT = 'pip install "cafe-bench[photos]" (from a checkout: pip install -e ".[photos]")'
_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


class Photo(NamedTuple):
    """A photograph: its name, the package (import name) that ships it, and its file inside that package."""

    name: str
    package: str
    file: str


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "data/astronaut.png"),
    Photo("chelsea", "skimage", "data/chelsea.png"),
    Photo("coffee", "skimage", "data/coffee.png"),
    Photo("rocket", "skimage", "data/rocket.jpg"),
    Photo("motorcycle_left", "skimage", "data/motorcycle_left.png"),
    Photo("motorcycle_right", "skimage", "data/motorcycle_right.png"),
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    Photo("retina", "skimage", "data/retina.jpg"),
    Photo("immunohistochemistry", "skimage", "data/ihc.png"),
    Photo("china", "sklearn", "datasets/images/china.jpg"),
    Photo("flower", "sklearn", "datasets/images/flower.jpg"),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)
"""The photographs, in id order."""
_BY_NAME = {photo.name: photo for photo in PHOTOS}


@dataclass(frozen=True)
class View:
    """A fixed view of a photo, cut from the full image before the model's preprocessing."""

    scale: float | None = None
    """Side of a square crop as a fraction of the shorter side; None: the whole photo."""
    x: float = 0.5
    """Horizontal place of the crop in the free width: 0 left edge, 1 right edge."""
    y: float = 0.5
    """Vertical place of the crop in the free height: 0 top edge, 1 bottom edge."""
    flip: bool = False
    """Mirror left-right (after the crop)."""

    def apply(self, image: Image.Image) -> Image.Image:
        """This view of a PIL image, as a new image (``image`` is left as it is)."""
        if self.scale is None and not self.flip:
            return image.copy()
        if self.scale is not None:
            width, height = image.size
            side = max(1, round(self.scale * min(width, height)))
            left, top = round(self.x * (width - side)), round(self.y * (height - side))
            image = image.crop((left, top, left + side, top + side))
        return ImageOps.mirror(image) if self.flip else image


VIEWS: dict[str, View] = {
    "centre": View(),
    "flip": View(flip=True),
    "crop-tl": View(0.6, 0.0, 0.0),
    "crop-tr": View(0.6, 1.0, 0.0),
    "crop-bl": View(0.6, 0.0, 1.0),
    "crop-br": View(0.6, 1.0, 1.0),
    "zoom": View(0.4, 0.5, 0.5),
}
"""The views by name, in their canonical order; an id is ``NAME`` for ``centre`` and ``NAME@VIEW`` otherwise."""


def _photo(name: str) -> Photo:
    if name not in _BY_NAME:
        raise UnknownNameError(f"unknown photo {name!r}; valid: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def photo_path(name: str) -> Path:
    """The file of photo ``name`` inside its installed package (found without importing the package).

    Raises:
        UnknownNameError: ``name`` is not in :data:`PHOTOS`.
        CafeBenchError: the package is not installed or its installed version lacks the file.
    """
    photo = _photo(name)
    dist = _DISTRIBUTIONS[photo.package]
    spec = importlib.util.find_spec(photo.package)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        raise CafeBenchError(f"photo {name!r} ships with {dist}, which is not installed; {_INSTALL_HINT}")
    for root in roots:
        path = Path(root) / photo.file
        if path.is_file():
            return path
    raise CafeBenchError(f"photo {name!r}: {photo.file} is not in the installed {dist}; {_INSTALL_HINT}")


def open_photo(name: str, view: str = "centre") -> Image.Image:
    """Photo ``name`` as an RGB PIL image, in view ``view`` (see :data:`VIEWS`), at its full resolution."""
    return _view(view).apply(_decoded(photo_path(name)))


@functools.lru_cache(maxsize=2)  # ids are photo-major: the views of one photo decode it once
def _decoded(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise ImageSourceError(f"{path}: not a readable image ({exc})") from None


def _view(view: str) -> View:
    if view not in VIEWS:
        raise UnknownNameError(f"unknown photo view {view!r}; valid: {', '.join(VIEWS)}")
    return VIEWS[view]


def _split(image_id: str) -> tuple[str, str]:
    name, _, view = image_id.partition("@")
    return name, view or "centre"


class PhotosSource(ImageSource):
    """The shipped photographs, each in the chosen views; ids are photo-major (every view of a photo together).

    Args:
        views: names from :data:`VIEWS`, in the order ids list them (default ``("centre",)``: one image per photo).
    """

    kind = "photos"

    def __init__(self, views: Sequence[str] | str | None = None):
        views = ("centre",) if views is None else (views,) if isinstance(views, str) else tuple(views)
        if not views:
            raise ImageSourceError(f"photos: no views; choose from {', '.join(VIEWS)}")
        for view in views:
            _view(view)
        self.views = tuple(dict.fromkeys(views))

    def ids(self) -> list[str]:
        return [name if view == "centre" else f"{name}@{view}" for name, *_ in PHOTOS for view in self.views]

    def _load_one(self, image_id, preprocess) -> np.ndarray:
        return to_model_input(open_photo(*_split(image_id)), preprocess)

    def sha256s(self, image_ids) -> list[str]:
        from cafe_bench.cache import cached_sha256

        image_ids = list(image_ids)
        self.check_ids(image_ids)
        names = list(dict.fromkeys(_split(i)[0] for i in image_ids))
        files = dict(zip(names, cached_sha256([photo_path(n) for n in names]), strict=True))
        out = []
        for image_id in image_ids:
            name, view = _split(image_id)
            out.append(hashlib.sha256(f"{files[name]}@{view}".encode()).hexdigest())
        return out

    def describe(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for dist in dict.fromkeys(_DISTRIBUTIONS[p.package] for p in PHOTOS):
            try:
                versions[dist] = version(dist)
            except PackageNotFoundError:
                versions[dist] = None
        return {
            **super().describe(),
            "views": list(self.views),
            "photos": [photo.name for photo in PHOTOS],
            "files": {photo.name: f"{photo.package}/{photo.file}" for photo in PHOTOS},
            "versions": versions,
        }


TRAINING_SCALE = (0.15, 1.0)
"""Area of a training crop as a fraction of the photo's area (torchvision's RandomResizedCrop uses 0.08..1)."""
TRAINING_RATIO = (3 / 4, 4 / 3)
"""Aspect ratio (width / height) range of a training crop, drawn log-uniformly, before resizing to a square."""


def training_crops(n_per_photo: int, size: int, seed: int) -> torch.Tensor:
    """Random resized crops of every photo for SAE training, (len(PHOTOS) * n_per_photo, 3, size, size) in [0, 1].

    Photo ``i``'s crops come from ``numpy.random.default_rng([seed, i])`` alone: a crop covering
    :data:`TRAINING_SCALE` of the photo's area with an aspect ratio in :data:`TRAINING_RATIO` (torchvision's
    RandomResizedCrop sampling, 10 tries then the central square), resized to ``size`` x ``size`` (bicubic,
    antialiased), then mirrored with probability 1/2. Rows are photo-major in :data:`PHOTOS` order.

    Args:
        n_per_photo: crops per photo (>= 1).
        size: side of each crop in pixels (the model's input size).
        seed: non-negative integer; equal seeds give equal crops.

    >>> training_crops(40, 168, seed=0).shape  # (480, 3, 168, 168)
    """
    for what, value, low in (("n_per_photo", n_per_photo, 1), ("size", size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}; got {value!r}")
    out = np.empty((len(PHOTOS) * n_per_photo, 3, size, size), dtype=np.float32)  # (N, 3, S, S)
    for index, photo in enumerate(PHOTOS):
        rng = np.random.default_rng([int(seed), index])
        image = open_photo(photo.name)
        for j in range(n_per_photo):
            crop = image.resize((size, size), Image.Resampling.BICUBIC, box=_random_box(rng, *image.size))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            out[index * n_per_photo + j] = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(out)


def _random_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of one random resized crop."""
    area = width * height
    log_ratio = np.log(TRAINING_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*TRAINING_SCALE)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


register_image_source("photos", lambda views=None: PhotosSource(views))
