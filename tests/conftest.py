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
