"""The photographs shipped in installed wheels: colour, read from disk, deterministic views, hashes and crops."""

import hashlib
import importlib.util

import numpy as np
import pytest
import torch

from cafe_bench.cache import file_sha256
from cafe_bench.errors import CafeBenchError, UnknownNameError
from cafe_bench.images import ImageSourceError, list_image_sources, make_image_source
from cafe_bench.models.base import Preprocess
from cafe_bench.photos import PHOTOS, VIEWS, PhotosSource, photo_path, training_crops

PRE = Preprocess((168, 168), 168)


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """File hashes go to a folder of this module's, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAFE_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def every_view():
    return PhotosSource(views=list(VIEWS))


def _chroma(images_n3hw: torch.Tensor) -> torch.Tensor:
    """Mean distance of each image's pixels from their grey (0 for a grey image stored as RGB)."""
    return (images_n3hw - images_n3hw.mean(1, keepdim=True)).abs().mean((1, 2, 3))


def test_centre_view_is_twelve_colour_photos():
    source = PhotosSource()
    assert source.ids() == [photo.name for photo in PHOTOS] and len(source.ids()) == 12
    for photo in PHOTOS:
        assert photo_path(photo.name).is_file()
    images = source.load(source.ids(), PRE)
    assert images.shape == (12, 3, 168, 168) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert (_chroma(images) > 0.004).all()  # the least colourful, hubble_deep_field, is at 0.008
    wide = source.load(["china"], Preprocess((224, 224), 224))
    assert wide.shape == (1, 3, 224, 224)


def test_loads_are_deterministic(every_view):
    ids = every_view.ids()[:14]
    assert torch.equal(every_view.load(ids, PRE), PhotosSource(views=list(VIEWS)).load(ids, PRE))


def test_hashes_are_stable_and_distinct(every_view):
    hashes = every_view.sha256s(every_view.ids())
    assert len(set(hashes)) == len(hashes) == 12 * len(VIEWS)
    assert PhotosSource(views=list(VIEWS)).sha256s(every_view.ids()) == hashes
    file_hash = file_sha256(photo_path("rocket"))
    assert every_view.hashes(["rocket", "rocket@zoom"]) == {
        "rocket": hashlib.sha256(f"{file_hash}@centre".encode()).hexdigest(),
        "rocket@zoom": hashlib.sha256(f"{file_hash}@zoom".encode()).hexdigest(),
    }


def test_views_differ(every_view):
    ids = [f"coffee@{view}" if view != "centre" else "coffee" for view in VIEWS]
    assert ids == every_view.ids()[2 * len(VIEWS) : 3 * len(VIEWS)]
    images = every_view.load(ids, PRE)  # (n_views, 3, 168, 168)
    gaps = (images[:, None] - images[None]).abs().mean((2, 3, 4))
    assert (gaps + torch.eye(len(VIEWS)) > 0.02).all()
    square = every_view.load(["astronaut", "astronaut@flip"], PRE)  # 512x512: the flip is the mirror image
    torch.testing.assert_close(square[1], square[0].flip(-1), atol=2 / 255, rtol=0)


def test_registered_and_described():
    assert "photos" in list_image_sources()
    source = make_image_source("photos", views=["centre", "crop-tl"])
    assert isinstance(source, PhotosSource) and source.ids()[:3] == ["astronaut", "astronaut@crop-tl", "chelsea"]
    description = source.describe()
    assert description["kind"] == "photos" and description["n_images"] == 24
    assert description["views"] == ["centre", "crop-tl"] and description["photos"] == [p.name for p in PHOTOS]
    assert make_image_source("photos").ids() == PhotosSource().ids()


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: centre, flip"):
        PhotosSource(views=["centre", "rotate"])
    with pytest.raises(UnknownNameError, match="valid: astronaut"):
        photo_path("lena")
    with pytest.raises(ImageSourceError, match="not in the photos source"):
        PhotosSource().load(["astronaut@flip"], PRE)


def test_missing_package_is_a_one_line_error(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else find_spec(name, *a)
    )
    with pytest.raises(CafeBenchError) as info:
        PhotosSource().load(["china"], PRE)
    message = str(info.value)
    assert "\n" not in message and "scikit-learn" in message and 'pip install -e ".[photos]"' in message


def test_training_crops_are_seeded():
    crops = training_crops(3, 56, seed=0)
    assert crops.shape == (36, 3, 56, 56) and crops.dtype == torch.float32
    assert crops.min() >= 0 and crops.max() <= 1
    assert torch.equal(crops, training_crops(3, 56, seed=0))
    assert not torch.equal(crops, training_crops(3, 56, seed=1))
    assert (crops[0] - crops[1]).abs().mean() > 0.01  # crops of one photo differ
    assert torch.equal(training_crops(1, 56, seed=0)[0], crops[0])  # photo i's crops depend on (seed, i) alone
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        training_crops(3, 56, seed=-1)


def test_photos_are_distinct_images():
    images = PhotosSource().load(PhotosSource().ids(), PRE).flatten(1)
    pairs = torch.cdist(images, images) + torch.eye(12) * 1e3
    assert np.all(pairs.numpy() > 1.0)  # no photo shipped twice (e.g. the two motorcycle views)
