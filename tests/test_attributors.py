import subprocess
import sys

import pytest
import torch

from cafe_bench.attributors.base import Attributor, AttributorError
from cafe_bench.attributors.registry import get_attributor, list_attributors, register_attributor
from cafe_bench.errors import UnknownNameError

BUILTINS = ["activation", "random", "gradient", "grad_x_input"]


@pytest.mark.parametrize("name", list_attributors())
def test_contract_shape_finite_deterministic(name, target):
    method = get_attributor(name)
    a = method.scores(target)
    b = get_attributor(name).scores(target)
    assert a.shape == (len(target), *target.grid)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)  # deterministic, or seeded by the target's unit seeds


@pytest.mark.parametrize("name", list_attributors())
def test_scores_do_not_depend_on_the_batch(name, suite, mixed_units, target):
    batched = get_attributor(name).scores(target)
    for i, unit in enumerate(mixed_units[:3]):
        alone = get_attributor(name).scores(suite.target([unit], seed=0))
        torch.testing.assert_close(alone[0], batched[i], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list_attributors())
def test_no_global_state_left_behind(name, target):
    before = get_attributor("gradient").scores(target)
    get_attributor(name).scores(target)
    after = get_attributor("gradient").scores(target)
    assert torch.equal(before, after)


def test_random_scores_follow_the_run_seed(suite, mixed_units):
    a = get_attributor("random").scores(suite.target(mixed_units[:2], seed=0))
    b = get_attributor("random").scores(suite.target(mixed_units[:2], seed=1))
    assert not torch.equal(a, b)


def test_activation_ranks_the_unit_token_first(target):
    scores = get_attributor("activation").scores(target).flatten(1)
    tokens = torch.tensor([u.token for u in target.units])
    assert torch.equal(scores.argmax(1), tokens)


def test_gradient_matches_a_finite_difference(target):
    grad_x = get_attributor("grad_x_input").scores(target).double().sum(dim=(1, 2))
    # grad x input summed over the image is the directional derivative along the image itself; central
    # differences with eps = 1e-3 (float32 forward) agree with it to at most 5.3e-4 absolute and 9.1e-4 relative
    # on these six units, whose sums range from -1.35 to 5.16 (a flipped sign or a dropped multiply-by-input,
    # whose gradient sums are 79 to 169, misses by far more)
    eps = 1e-3
    with torch.no_grad():
        up = target.forward(target.images * (1 + eps)).double()
        down = target.forward(target.images * (1 - eps)).double()
    fd = (up - down) / (2 * eps)
    torch.testing.assert_close(grad_x, fd, rtol=2e-3, atol=3e-4)


def test_list_attributors_filters_with_wildcards():
    assert set(BUILTINS) <= set(list_attributors())
    assert list_attributors("*grad*") == ["grad_x_input", "gradient", "integrated_gradients", "smoothgrad"]


def test_unknown_method_suggests_and_lists():
    with pytest.raises(UnknownNameError, match=r"did you mean 'gradient'.*valid: .*activation"):
        get_attributor("gradiant")


def test_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @register_attributor("gradient")
        class Other(Attributor):
            def attribute(self, target):
                return torch.zeros(len(target), *target.grid)


class _Bad(Attributor):
    name = "bad"

    def __init__(self, result):
        self.result = result

    def attribute(self, target):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result(target)


@pytest.mark.parametrize(
    "result, message",
    [
        (lambda t: torch.full((len(t), *t.grid), float("nan")), "non-finite"),
        (lambda t: torch.zeros(len(t), 3, 3), "expected scores of shape"),
        (lambda t: torch.zeros(len(t) + 1, *t.grid), "maps for"),
        (lambda t: torch.zeros(len(t), *t.grid, dtype=torch.long), "dtype"),
        (RuntimeError("boom"), "raised RuntimeError: boom"),
    ],
)
def test_contract_violations_are_reported_with_the_method_name(target, result, message):
    with pytest.raises(AttributorError, match=message) as info:
        _Bad(result).scores(target)
    assert "'bad'" in str(info.value)


def test_pixel_relevance_is_pooled_by_summing_inside_patches(target):
    gh, gw = target.grid
    p = target.patch_size
    pixel = torch.zeros(len(target), 3, gh * p, gw * p)
    pixel[:, 0, 0, 0] = 1.0
    pixel[:, 2, p - 1, p - 1] = 2.0
    pixel[:, 1, p, 0] = 5.0  # first pixel of patch row 1
    pooled = target.pool(pixel)
    assert pooled.shape == (len(target), gh, gw)
    assert pooled[:, 0, 0].tolist() == [3.0] * len(target)
    assert pooled[:, 1, 0].tolist() == [5.0] * len(target)
    assert pooled.sum().item() == pytest.approx(8.0 * len(target))


def test_import_is_cheap():
    code = "import sys, cafe_bench; print(any(m in sys.modules for m in ('torch', 'captum', 'shap', 'lxt')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_entry_point_plugins_are_found_and_run(monkeypatch, target):
    from importlib.metadata import EntryPoint

    import cafe_bench.attributors.registry as registry

    class FakeDist:
        name, version = "my-plugin", "1.2.3"

    class Plugin(Attributor):
        """Scores each patch by its row index."""

        def attribute(self, target):
            gh, gw = target.grid
            return torch.arange(gh, dtype=torch.float32).view(1, gh, 1).expand(len(target), gh, gw)

    monkeypatch.setattr(registry, "_Plugin", Plugin, raising=False)
    ep = EntryPoint(name="row_plugin", value=f"{registry.__name__}:_Plugin", group=registry.ENTRY_POINT_GROUP)
    ep = ep._for(FakeDist())  # what importlib.metadata does for an installed distribution
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    assert "row_plugin" in list_attributors()
    scores = get_attributor("row_plugin").scores(target)
    assert scores[0, :, 0].tolist() == list(range(target.grid[0]))
    assert registry.attributor_source("row_plugin") == "my-plugin 1.2.3"


def test_a_method_that_needs_no_gradient_runs_without_autograd(suite):
    seen = {}

    class Probe(Attributor):
        needs_grad = False

        def attribute(self, target):
            seen["grad"] = torch.is_grad_enabled()
            return torch.zeros(len(target), *target.grid)

    class GradProbe(Probe):
        needs_grad = True

    target = suite.target(suite.units([1])[:2])
    Probe().scores(target)
    assert seen["grad"] is False
    GradProbe().scores(target)
    assert seen["grad"] is True
