"""Image sources: where a suite's images come from, each image named by an id and hashed.

An :class:`ImageSource` lists its image ids, loads images as ``(N, 3, H, W)`` float32 in [0, 1] preprocessed for
a model (resize the shorter side, centre crop: :class:`cafe_bench.models.base.Preprocess`), and gives each
image's SHA-256 so that a feature set can pin the images it was built on. File sources name images by their
path relative to the source (strings, ``/``-separated); the built-in scenes are named by their integer index in a
seeded stream. File hashes are cached by (path, size, mtime): a folder is hashed once, not on every load.

Sources are registered by kind (``folder``, ``list``, ``scenes``, ``photos``) and built from a suite's
``[images]`` table by :func:`make_image_source`.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cafe_bench.errors import CafeBenchError, UnknownNameError

ImageId = int | str
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File name endings a folder source treats as images (any case)."""


class ImageSourceError(CafeBenchError):
    """A missing folder, an empty source, an unknown image id or an unreadable image."""


class ImageSource(abc.ABC):
    """Images named by id. Subclasses set ``kind`` and implement ``ids``, ``_load_one`` and ``sha256``."""

    kind: str = ""

    @abc.abstractmethod
    def ids(self) -> list[ImageId]:
        """Every image id, in a fixed order."""

    @abc.abstractmethod
    def _load_one(self, image_id: ImageId, preprocess) -> np.ndarray:
        """One image, (3, H, W) float32 in [0, 1], preprocessed."""

    @abc.abstractmethod
    def sha256s(self, image_ids: Sequence[ImageId]) -> list[str]:
        """SHA-256 of each image's bytes (the file's, or the generated pixels')."""

    def describe(self) -> dict:
        """What a run or a feature set records about the source."""
        return {"kind": self.kind, "n_images": len(self.ids())}

    def check_ids(self, image_ids) -> None:
        """Raise ImageSourceError naming the first id the source does not hold."""
        known = set(self.ids())
        for image_id in image_ids:
            if image_id not in known:
                raise ImageSourceError(f"image {image_id!r} is not in the {self.kind} source ({len(known)} images)")

    def hashes(self, image_ids=None) -> dict[str, str]:
        """{str(id): sha256} of ``image_ids`` (default: all)."""
        image_ids = self.ids() if image_ids is None else list(image_ids)
        return {str(i): h for i, h in zip(image_ids, self.sha256s(image_ids), strict=True)}

    def load(self, image_ids, preprocess) -> torch.Tensor:
        """Images ``image_ids`` preprocessed by ``preprocess``: (N, 3, H, W) float32 in [0, 1]."""
        image_ids = list(image_ids)
        self.check_ids(image_ids)
        return torch.from_numpy(np.stack([self._load_one(i, preprocess) for i in image_ids]))


def to_model_input(image, preprocess) -> np.ndarray:
    """A PIL image -> (3, H, W) float32 in [0, 1]: RGB, shorter side resized, centre-cropped (torchvision)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    image = image.convert("RGB")
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    mode = modes.get(preprocess.interpolation, InterpolationMode.BICUBIC)
    image = F.resize(image, preprocess.resize, interpolation=mode, antialias=True)
    image = F.center_crop(image, list(preprocess.size))
    return np.asarray(F.to_tensor(image), dtype=np.float32).clip(0.0, 1.0)


class FileImageSource(ImageSource):
    """Images stored as files: ids are paths relative to ``root`` (``/``-separated)."""

    def __init__(self, root: Path, relpaths: list[str]):
        self.root = Path(root)
        self._ids = list(relpaths)
        if not self._ids:
            raise ImageSourceError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def ids(self) -> list[str]:
        return list(self._ids)

    def path(self, image_id: str) -> Path:
        """The file of one image."""
        return self.root / image_id

    def _load_one(self, image_id, preprocess) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.path(image_id)) as image:
                return to_model_input(image, preprocess)
        except (OSError, UnidentifiedImageError) as exc:
            raise ImageSourceError(f"{self.path(image_id)}: not a readable image ({exc})") from None

    def sha256s(self, image_ids) -> list[str]:
        from cafe_bench.cache import cached_sha256

        self.check_ids(image_ids)
        return cached_sha256([self.path(i) for i in image_ids])

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root)}


class FolderSource(FileImageSource):
    """Every image file under ``root``, flat or in class folders (ImageNet layout), sorted by relative path."""

    kind = "folder"

    def __init__(self, root):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ImageSourceError(f"{root}: image folder not found")
        files = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        super().__init__(root, files)


class ListSource(FileImageSource):
    """Images named one per line in a text file, relative to the file's folder (blank lines and ``#`` skipped)."""

    kind = "list"

    def __init__(self, list_file):
        list_file = Path(list_file).expanduser()
        if not list_file.is_file():
            raise ImageSourceError(f"{list_file}: image list not found")
        lines = [line.strip() for line in list_file.read_text().splitlines()]
        lines = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
        super().__init__(list_file.parent, lines)
        self.list_file = list_file
        missing = [i for i in self._ids if not self.path(i).is_file()]
        if missing:
            raise ImageSourceError(f"{list_file}: lists {missing[0]!r}, which is not a file ({len(missing)} missing)")

    def describe(self) -> dict:
        return {**super().describe(), "list": str(self.list_file)}


class ScenesSource(ImageSource):
    """The built-in procedural scenes: image ``i`` is a pure function of (seed, i); ids are ``0..n_images-1``."""

    kind = "scenes"

    def __init__(self, seed: int, n_images: int, config=None):
        from cafe_bench.scenes import SceneConfig

        self.seed = int(seed)
        self.n_images = int(n_images)
        self.config = config if config is not None else SceneConfig()

    def ids(self) -> list[int]:
        return list(range(self.n_images))

    def check_ids(self, image_ids) -> None:
        for image_id in image_ids:
            if isinstance(image_id, bool) or not isinstance(image_id, int | np.integer) or image_id < 0:
                raise ImageSourceError(f"scene id {image_id!r} is not a non-negative integer")
            if image_id >= self.n_images:
                raise ImageSourceError(f"scene id {image_id} out of range; valid: 0..{self.n_images - 1}")

    def _load_one(self, image_id, preprocess) -> np.ndarray:
        from cafe_bench.scenes import make_images

        image = make_images(self.seed, [int(image_id)], self.config)[0]
        if tuple(image.shape[1:]) != tuple(preprocess.size):
            raise ImageSourceError(
                f"scenes are {image.shape[1]}x{image.shape[2]} pixels but the model takes "
                f"{preprocess.size[0]}x{preprocess.size[1]}; set the scene size to the model's input size"
            )
        return image

    def sha256s(self, image_ids) -> list[str]:
        from cafe_bench.scenes import make_images

        self.check_ids(image_ids)
        return [
            hashlib.sha256(make_images(self.seed, [int(i)], self.config)[0].tobytes()).hexdigest() for i in image_ids
        ]

    def describe(self) -> dict:
        from dataclasses import asdict

        return {**super().describe(), "seed": self.seed, "config": asdict(self.config)}


_SOURCES: dict[str, Callable[..., ImageSource]] = {}


def register_image_source(kind: str, factory: Callable[..., ImageSource]) -> None:
    """Make ``kind`` usable in a suite's ``[images]`` table; ``factory(**fields)`` builds the source."""
    _SOURCES[kind] = factory


def list_image_sources() -> list[str]:
    """Registered image source kinds."""
    _load_builtins()
    return sorted(_SOURCES)


def _load_builtins() -> None:
    if "photos" not in _SOURCES:
        try:
            import cafe_bench.photos  # noqa: F401  (registers "photos")
        except ModuleNotFoundError as exc:
            if exc.name != "cafe_bench.photos":
                raise


def make_image_source(kind: str, **fields) -> ImageSource:
    """The source of ``kind`` built from its fields (e.g. ``make_image_source("folder", path="val")``)."""
    _load_builtins()
    if kind not in _SOURCES:
        raise UnknownNameError(f"unknown image source {kind!r}; valid: {', '.join(sorted(_SOURCES))}")
    try:
        return _SOURCES[kind](**fields)
    except (TypeError, ValueError) as exc:
        raise ImageSourceError(f"image source {kind!r}: {exc}") from None


register_image_source("folder", lambda path: FolderSource(path))
register_image_source("list", lambda path: ListSource(path))
register_image_source("scenes", lambda seed, n_images, **config: ScenesSource(seed, n_images, _scene_config(config)))


def _scene_config(fields: dict):
    from cafe_bench.scenes import SceneConfig

    return SceneConfig(**fields) if fields else SceneConfig()
