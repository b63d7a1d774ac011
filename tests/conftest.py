import os
import tempfile

import pytest
import torch

from cafe_bench.suites import load_suite
from cafe_bench.target import Unit


def pytest_configure(config):
    """Converted weights and file hashes go to a cache of this test session, never the user's."""
    os.environ["CAFE_BENCH_CACHE"] = tempfile.mkdtemp(prefix="cafe_bench_cache_")


@pytest.fixture(scope="session")
def suite():
    return load_suite("tiny")


@pytest.fixture(scope="session")
def mixed_units(suite):
    """Two units of every layer: a batch that spans layers and features."""
    out = []
    for layer in suite.layers:
        out += suite.units([layer])[:2]
    return out


@pytest.fixture(scope="session")
def target(suite, mixed_units):
    return suite.target(mixed_units, seed=0)


@pytest.fixture(scope="session")
def dead_unit(suite):
    """A unit whose feature does not fire at its token on the clean image."""
    unit = suite.units()[0]
    t = suite.target([unit])
    fmap = t.feature_map(t.images).detach().flatten()
    zero = (fmap == 0).nonzero().flatten()
    assert len(zero), "expected a token where the feature is silent"
    return Unit(unit.layer, unit.feature, unit.image_id, int(zero[0]))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


class AdditiveTarget:
    """A stand-in Target whose z_k is a known weighted pixel sum, z = sum(w * image), per unit: every game on it is
    additive, so Shapley values, occlusion effects and the greedy oracle have closed forms."""

    def __init__(self, weights_bhw, images, baseline, grid=(2, 2), patch_size=2):
        self.weights = torch.as_tensor(weights_bhw, dtype=torch.float64)
        self.images = torch.as_tensor(images, dtype=torch.float64)
        self.baseline = torch.as_tensor(baseline, dtype=torch.float64)
        self.grid, self.patch_size, self.baseline_name = tuple(grid), patch_size, None
        self.device = self.images.device
        self.clean = self.forward(self.images)

    @property
    def n_patches(self):
        return self.grid[0] * self.grid[1]

    def __len__(self):
        return len(self.images)

    def activations(self, images, unit_idx):
        return (images.double().sum(1) * self.weights[unit_idx]).sum(dim=(1, 2)).float()

    def forward(self, images):
        return self.activations(images, torch.arange(len(images)))


@pytest.fixture
def additive_target():
    """Factory: AdditiveTarget(weights (B, H, W), images (B, 3, H, W), baseline (B, 3, H, W), grid, patch_size)."""
    return AdditiveTarget
