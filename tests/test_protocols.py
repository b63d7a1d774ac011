import numpy as np
import pytest
import torch

import cafe_bench
from cafe_bench.errors import UnknownNameError
from cafe_bench.protocols.baselines import list_baselines, make_baseline, register_baseline
from cafe_bench.protocols.engine import run_curves, run_curves_naive
from cafe_bench.protocols.registry import Protocol, get_protocol, list_protocols, register_protocol


def test_builtin_protocols_and_their_directions():
    assert list_protocols()[:2] == ["insertion", "deletion"]
    expected = {
        "insertion": ("baseline", "most", True),
        "deletion": ("image", "most", False),
        "insertion_lerf": ("baseline", "least", False),
        "deletion_lerf": ("image", "least", True),
    }
    for name, (start, order, higher) in expected.items():
        p = get_protocol(name)
        assert (p.start, p.order, p.higher_is_better) == (start, order, higher)
    with pytest.raises(UnknownNameError, match="valid: insertion, deletion, deletion_lerf, insertion_lerf"):
        get_protocol("morf")
    with pytest.raises(ValueError, match="already registered"):
        register_protocol(Protocol("insertion", "image", "most", False))
    with pytest.raises(ValueError, match="order must be one of most, least"):
        Protocol("x", "image", "random", True)


@pytest.mark.parametrize("protocol", ["insertion_lerf", "deletion_lerf"])
def test_lerf_engine_equals_the_naive_loop(suite, protocol):
    units = suite.units([3])[:3]
    target = suite.target(units)
    scores = cafe_bench.get_attributor("gradient").scores(target)
    fast = run_curves(target, scores, protocol, 8)
    slow = run_curves_naive(target, scores, protocol, 8)
    np.testing.assert_allclose(fast.activations, slow.activations, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lerf, morf", [("insertion_lerf", "insertion"), ("deletion_lerf", "deletion")])
def test_least_relevant_first_is_most_relevant_first_of_the_negated_scores(suite, lerf, morf):
    target = suite.target(suite.units([1])[:4])
    scores = cafe_bench.get_attributor("gradient").scores(target)
    assert all(len(torch.unique(s)) == s.numel() for s in scores)  # no ties, so the orders are exact reverses
    a = run_curves(target, scores, lerf, 16).activations
    b = run_curves(target, -scores, morf, 16).activations
    np.testing.assert_array_equal(a, b)
    c = run_curves(target, scores, morf, 16).activations
    assert not np.allclose(a[:, 1:-1], c[:, 1:-1])  # and it is not the MoRF curve


def test_lerf_runs_opt_in_and_records_its_direction(tmp_path):
    df = cafe_bench.run(
        "tiny", methods=["activation", "random"], layers=[5], protocols=["insertion_lerf"], progress=False
    )
    assert set(df["protocol"]) == {"insertion_lerf"} and not df["higher_is_better"].any()
    means = df[df.status == "ok"].groupby("method")["auc"].mean()
    # inserting the least active patches first recovers the activation late: below random
    assert means["activation"] < means["random"]
    summary = cafe_bench.summarize(df, n_resamples=100)
    best = summary[summary.best].iloc[0]
    assert best["method"] == "activation" and not best["higher_is_better"]


def test_baselines_are_a_registry():
    images = torch.rand(2, 3, 8, 8)
    assert {"blur", "mean", "zero"} <= set(list_baselines())
    assert torch.equal(make_baseline("zero", images), torch.zeros_like(images))
    mean = make_baseline("mean", images)
    np.testing.assert_allclose(mean[:, :, 3, 5], images.mean(dim=(2, 3)), rtol=1e-6)

    @register_baseline("half_test")
    def half(images_b3hw, **_):
        return images_b3hw * 0.5

    try:
        assert torch.equal(make_baseline("half_test", images), images * 0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_baseline("half_test")(lambda x, **_: x)
    finally:
        from cafe_bench.protocols import baselines

        del baselines._BASELINES["half_test"]
    with pytest.raises(UnknownNameError, match="valid: blur, mean, road, zero"):
        make_baseline("gray", images)


def test_a_mask_dependent_baseline_plugs_in_without_touching_the_engine(suite):
    """A ROAD-like baseline (removed patches filled from the kept pixels) registers an impute function; the
    batched engine and the naive loop both use it, and it changes the curves."""
    from cafe_bench.protocols import baselines

    def fill_with_kept_mean(images, removed, baseline):
        kept = (~removed).float()  # (N, 1, H, W)
        mean = (images * kept).sum(dim=(2, 3), keepdim=True) / kept.sum(dim=(2, 3), keepdim=True).clamp(min=1)
        return torch.where(removed, mean.expand_as(images), images)

    register_baseline("kept_mean_test", impute=fill_with_kept_mean)(baselines.mean_colour)
    try:
        units = suite.units([3])[:3]
        target = suite.target(units, baseline="kept_mean_test")
        assert target.baseline_name == "kept_mean_test"
        scores = cafe_bench.get_attributor("gradient").scores(target)
        for protocol in ("insertion", "deletion_lerf"):
            fast = run_curves(target, scores, protocol, 8).activations
            slow = run_curves_naive(target, scores, protocol, 8).activations
            np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
            plain = suite.target(units, baseline="mean")  # same baseline image, plain replacement
            other = run_curves(plain, scores, protocol, 8).activations
            assert not np.allclose(fast[:, 1:-1], other[:, 1:-1])
    finally:
        baselines._BASELINES.pop("kept_mean_test", None)
        baselines._IMPUTERS.pop("kept_mean_test", None)
