"""Image sources and the file-hash cache: ids, loading with a model's preprocessing, hashes computed once."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

import cafe_bench.cache as cache
from cafe_bench.errors import UnknownNameError
from cafe_bench.images import FolderSource, ImageSourceError, ListSource, ScenesSource, make_image_source
from cafe_bench.models.base import Preprocess
from cafe_bench.scenes import SceneConfig, make_images


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFE_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_memory", {})
    return tmp_path / "cache"


def _png(path, rgb, size=(30, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), rgb, np.uint8)).save(path)


def test_folder_ids_are_sorted_relative_paths_of_image_files(tmp_path):
    _png(tmp_path / "b" / "2.png", (1, 2, 3))
    _png(tmp_path / "a.PNG", (4, 5, 6))
    _png(tmp_path / "b" / "1.jpg", (7, 8, 9))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert FolderSource(tmp_path).ids() == ["a.PNG", "b/1.jpg", "b/2.png"]
    with pytest.raises(ImageSourceError, match="image folder not found"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSourceError, match="no images"):
        FolderSource(tmp_path / "empty")


def test_list_source_reads_paths_beside_the_list(tmp_path):
    _png(tmp_path / "x" / "1.png", (0, 0, 0))
    _png(tmp_path / "2.png", (0, 0, 0))
    (tmp_path / "list.txt").write_text("# my images\nx/1.png\n\n2.png\nx/1.png\n")
    assert ListSource(tmp_path / "list.txt").ids() == ["x/1.png", "2.png"]
    (tmp_path / "bad.txt").write_text("x/1.png\nmissing.png\n")
    with pytest.raises(ImageSourceError, match="lists 'missing.png', which is not a file"):
        ListSource(tmp_path / "bad.txt")


def test_load_resizes_the_shorter_side_and_centre_crops(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)  # H 20, W 30
    Image.fromarray(pixels).save(tmp_path / "a.png")
    source = FolderSource(tmp_path)
    got = source.load(["a.png"], Preprocess((10, 10), 10, "bilinear")).numpy()[0]
    # independently: PIL resize to 15 x 10 (W x H), crop columns 2..12 (torchvision rounds the offset)
    expected = Image.fromarray(pixels).resize((15, 10), Image.Resampling.BILINEAR, reducing_gap=None)
    expected = np.asarray(expected, np.float32)[:, 2:12].transpose(2, 0, 1) / 255.0
    assert got.shape == (3, 10, 10) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.02  # antialiased vs PIL's own filter: rounding of a few levels
    with pytest.raises(ImageSourceError, match="'b.png' is not in the folder source"):
        source.load(["b.png"], Preprocess((10, 10), 10))


def test_hashes_are_file_sha256_computed_once(tmp_path, own_cache, monkeypatch):
    _png(tmp_path / "a.png", (1, 2, 3))
    _png(tmp_path / "b.png", (3, 2, 1))
    source = FolderSource(tmp_path)
    truth = {i: hashlib.sha256((tmp_path / i).read_bytes()).hexdigest() for i in source.ids()}
    assert source.hashes() == truth
    calls = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(cache, "_memory", {})  # a new process: reads the cache file
    assert source.hashes() == truth and calls == []
    assert (own_cache / "sha256.json").is_file()


def test_a_same_size_same_mtime_replacement_is_hashed_again(tmp_path, own_cache):
    path = tmp_path / "a.png"
    _png(path, (1, 2, 3))
    first = cache.cached_sha256([path])[0]
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` leaves it
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    again = cache.cached_sha256([path])[0]
    assert again != first and again == hashlib.sha256(bytes(data)).hexdigest()


def test_scenes_source_ids_pixels_and_refusals():
    config = SceneConfig(size=64)
    source = ScenesSource(seed=3, n_images=5, config=config)
    assert source.ids() == [0, 1, 2, 3, 4]
    images = source.load([4, 1], Preprocess((64, 64), 64)).numpy()
    np.testing.assert_array_equal(images, make_images(3, [4, 1], config))
    assert source.hashes([1]) == {"1": hashlib.sha256(make_images(3, [1], config)[0].tobytes()).hexdigest()}
    with pytest.raises(ImageSourceError, match="out of range; valid: 0..4"):
        source.check_ids([5])
    with pytest.raises(ImageSourceError, match="not a non-negative integer"):
        source.check_ids(["1"])
    with pytest.raises(ImageSourceError, match="takes 32x32"):
        source.load([0], Preprocess((32, 32), 32))


def test_make_image_source_names_kinds_and_bad_fields(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown image source 'glob'; valid: folder, list, photos, scenes"):
        make_image_source("glob")
    with pytest.raises(ImageSourceError, match="image source 'scenes'"):
        make_image_source("scenes", seed="x", n_images=3)
    with pytest.raises(ImageSourceError, match="image source 'folder'"):
        make_image_source("folder", path=tmp_path, recursive=True)
