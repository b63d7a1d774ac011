"""The model-randomisation sanity check: what it redraws, and that it flags what it must (the control `random`, a
model-independent method) and not a method whose maps follow the model."""

from __future__ import annotations

import json

import pytest
import torch

from cafe_bench.attributors import registry
from cafe_bench.attributors.base import Attributor, Cost
from cafe_bench.cli import main
from cafe_bench.sanity import SanityRow, cascading_randomisation, flags, randomise_blocks


def test_randomise_blocks_redraws_only_those_blocks_keeping_scale(suite):
    original = {k: v.clone() for k, v in suite.backbone.state_dict().items()}
    copy = randomise_blocks(suite.backbone, [1, 2], seed=3)
    for key, value in copy.state_dict().items():
        changed = not torch.equal(value, original[key])
        in_chosen = key.startswith(("visual.transformer.resblocks.1.", "visual.transformer.resblocks.2."))
        if in_chosen and value.numel() > 1 and original[key].std() > 0:
            assert changed, key
            assert value.mean().item() == pytest.approx(original[key].mean().item(), abs=4 * original[key].std().item())
            assert value.std().item() == pytest.approx(original[key].std().item(), rel=0.5)
        elif not in_chosen:
            assert not changed, key  # other blocks, the embedding and buffers are the trained ones
    assert all(torch.equal(v, original[k]) for k, v in suite.backbone.state_dict().items())  # original untouched
    again = randomise_blocks(suite.backbone, [1, 2], seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in copy.state_dict().items())
    embedded = randomise_blocks(suite.backbone, [], seed=3, embedding=True).state_dict()
    assert not torch.equal(embedded["visual.conv1.weight"], original["visual.conv1.weight"])
    assert torch.equal(embedded["visual.transformer.resblocks.0.attn.in_proj_weight"],
                       original["visual.transformer.resblocks.0.attn.in_proj_weight"])  # fmt: skip


class ImageBrightness(Attributor):
    """Scores each patch by the image's brightness there: blind to the model, so the check must flag it."""

    name = "image_brightness"
    needs_grad = False

    def cost(self, n_patches: int) -> Cost:
        return Cost(forward=0, backward=0)

    def attribute(self, target):
        return target.images.mean(1)


@pytest.fixture
def brightness(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "image_brightness", ImageBrightness)
    monkeypatch.setitem(registry._SOURCES, "image_brightness", f"{__name__}:ImageBrightness")
    return "image_brightness"


def test_flags_the_control_and_a_model_blind_method_not_attnlrp(suite, brightness):
    rows = cascading_randomisation(suite, ["random", brightness, "attnlrp"], layers=[1], n_units=6, progress=False)
    stages = sorted({r.randomised_from for r in rows}, reverse=True)
    assert stages == [1, 0, -1]
    by = {(r.method, r.randomised_from): r for r in rows}
    for stage in stages:
        assert by[("random", stage)].median_rho == pytest.approx(1.0)
        assert by[(brightness, stage)].median_rho == pytest.approx(1.0)
    assert by[("attnlrp", 0)].n_units >= 4 and abs(by[("attnlrp", 0)].median_rho) < 0.5
    assert flags(rows) == {1: {"random": True, brightness: True, "attnlrp": False}}


def test_flags_leave_undefined_correlations_unflagged():
    rows = [
        SanityRow("gradient", 5, 0, None, 0, 8),
        SanityRow("random", 5, 0, 1.0, 8, 0),
        SanityRow("random", 5, 3, 1.0, 8, 0),
        SanityRow("activation", 5, 0, -0.7, 8, 0),
    ]
    assert flags(rows) == {5: {"gradient": None, "random": True, "activation": True}}
    assert flags(rows, threshold=0.8) == {5: {"gradient": None, "random": True, "activation": False}}


def test_cli_exits_1_on_a_flagged_method_and_writes_json(tmp_path, capsys, brightness):
    out = tmp_path / "sanity.json"
    args = ["sanity", "tiny", "--layers", "1", "--units", "4", "--no-progress", "--out", str(out)]
    assert main([*args, "--methods", "random,attnlrp"]) == 0  # only the control is flagged
    doc = json.loads(out.read_text())
    assert doc["flags"] == {"1": {"random": True, "attnlrp": False}} and len(doc["rows"]) == 2 * 3
    assert main([*args, "--methods", f"random,{brightness}"]) == 1
    assert f"FLAG  layer 1: {brightness}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--units", "0"], "--units must be a positive integer"),
        (["--threshold", "2"], "--threshold must be in [0, 1]"),
        (["--layers", "4"], "has no SAE at layer 4"),
    ],
)
def test_cli_mistakes_exit_2(capsys, extra, message):
    assert main(["sanity", "tiny", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


class BaselineBrightness(ImageBrightness):
    """Scores each patch by the *baseline* image's brightness there: constant for a flat baseline."""

    name = "baseline_brightness"

    def attribute(self, target):
        return target.baseline.mean(1)


def test_the_check_uses_the_given_baseline_and_units(suite, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "baseline_brightness", BaselineBrightness)
    monkeypatch.setitem(registry._SOURCES, "baseline_brightness", f"{__name__}:BaselineBrightness")
    units = suite.units([1])[5:8]
    kwargs = dict(layers=[1], n_units=2, progress=False, units=units)
    blur = cascading_randomisation(suite, ["baseline_brightness"], baseline="blur", **kwargs)
    zero = cascading_randomisation(suite, ["baseline_brightness"], baseline="zero", **kwargs)
    # on the blurred image the map varies (rho = 1, model-blind); on black it is constant (no rho at all)
    assert all(r.n_units == 2 and r.median_rho == pytest.approx(1.0) for r in blur)
    assert all(r.n_units == 0 and r.n_undefined == 2 for r in zero)


def test_the_check_refuses_bad_method_parameters_like_a_run(suite):
    from cafe_bench.errors import CafeBenchError

    with pytest.raises(CafeBenchError, match="nt_sample"):
        cascading_randomisation(
            suite, ["smoothgrad"], layers=[1], n_units=1, progress=False, method_args={"smoothgrad": {"nt_sample": 4}}
        )
