"""Speed of the curve engine and the default run, each as a ratio to a naive reference in the same session.

tox -e bench        (or: pytest benchmarks --benchmark-enable --benchmark-only)
"""

import time

import pytest
import torch

import cafe_bench
from cafe_bench.attributors.registry import get_attributor
from cafe_bench.protocols.engine import run_curves, run_curves_naive

_TIMES = {}


def _ratio(benchmark, group, key):
    _TIMES[(group, key)] = benchmark.stats.stats.median
    if (group, "naive") in _TIMES and (group, "batched") in _TIMES:
        ratio = _TIMES[(group, "naive")] / _TIMES[(group, "batched")]
        benchmark.extra_info["speedup_vs_naive"] = round(ratio, 2)
        print(f"\n{group}: batched is {ratio:.1f}x faster than the naive reference")


@pytest.fixture(scope="module")
def curve_case(suite):
    units = suite.units([5])[:8]
    target = suite.target(units)
    return target, get_attributor("activation").scores(target)


@pytest.mark.benchmark(group="curves: 8 units x 17 steps, insertion, layer 5")
@pytest.mark.parametrize("kind", ["naive", "batched"])
def test_curve_engine(benchmark, curve_case, kind):
    target, scores = curve_case
    if kind == "naive":
        result = benchmark(run_curves_naive, target, scores, "insertion", 16)
    else:
        with torch.no_grad():
            ends = (target.forward(target.baseline), target.clean)
        result = benchmark(run_curves, target, scores, "insertion", 16, 512, ends)
    assert result.activations.shape == (8, 17)
    _ratio(benchmark, "curves", kind)


@pytest.mark.benchmark(group="forward: 64 images to block 1")
@pytest.mark.parametrize("kind", ["naive", "batched"])
def test_truncated_forward(benchmark, suite, kind):
    images = suite.images(range(64))
    bb = suite.backbone
    with torch.no_grad():
        if kind == "naive":  # the whole tower, as a model call would
            out = benchmark(bb.residuals, images, [bb.n_blocks - 1])
        else:
            out = benchmark(bb.residuals, images, [1])
    assert len(out) == 1
    _ratio(benchmark, "forward", kind)


@pytest.mark.benchmark(group="run: tiny layer 1, 4 methods x 2 protocols")
@pytest.mark.parametrize("kind", ["naive", "batched"])
def test_run_layer(benchmark, kind):
    kwargs = {"layers": [1], "methods": ["activation", "random", "gradient", "grad_x_input"], "progress": False}
    if kind == "naive":  # one unit per target, every step its own forward pass
        import cafe_bench.runner as runner

        def naive_run():
            original = runner.run_curves
            runner.run_curves = lambda t, s, p, steps, *a, **k: run_curves_naive(t, s, p, steps)
            try:
                return cafe_bench.run("tiny", unit_batch=1, **kwargs)
            finally:
                runner.run_curves = original

        df = benchmark.pedantic(naive_run, rounds=1, iterations=1)
    else:
        df = benchmark.pedantic(cafe_bench.run, args=("tiny",), kwargs=kwargs, rounds=3, iterations=1)
    assert (df["status"] == "ok").all()
    _ratio(benchmark, "run", kind)


@pytest.mark.benchmark(group="run: default `cafe-bench run` (tiny, all layers and methods)")
def test_default_run(benchmark):
    t0 = time.perf_counter()
    df = benchmark.pedantic(cafe_bench.run, args=("tiny",), kwargs={"progress": False}, rounds=1, iterations=1)
    benchmark.extra_info["wall_s"] = round(time.perf_counter() - t0, 2)
    assert len(df) > 0 and (df["status"] == "ok").all()
