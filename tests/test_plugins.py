"""A third-party attributor installed as a package is found, validated and run."""

import subprocess
import sys
from pathlib import Path

import pytest

import cafe_bench
from cafe_bench.attributors import registry
from cafe_bench.attributors.base import Attributor
from cafe_bench.validate import validate_attributor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cafe_bench_example_plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example plugin pip-installed (no deps, no network) into a directory put on sys.path."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    registry._REGISTRY.pop("smoothed_activation", None)
    registry._SOURCES.pop("smoothed_activation", None)


def test_installed_plugin_is_listed_with_its_distribution(installed_example):
    assert "smoothed_activation" in registry.list_attributors()
    assert registry.attributor_source("smoothed_activation") == "cafe-bench-example-plugin 0.1.0"
    assert issubclass(registry.attributor_class("smoothed_activation"), Attributor)


def test_installed_plugin_validates_and_runs(installed_example):
    checks = validate_attributor("smoothed_activation", n_units=3)
    assert all(c.passed for c in checks), checks
    df = cafe_bench.run("tiny", methods=["smoothed_activation"], layers=[1], protocols=["insertion"], progress=False)
    assert (df["status"] == "ok").all() and len(df) == 32


class _Broken(Attributor):
    name = "broken"

    def attribute(self, target):
        import torch

        return torch.full((len(target), *target.grid), float("nan"))


class _Leaky(Attributor):
    name = "leaky"

    def attribute(self, target):
        import torch

        return torch.rand(len(target), *target.grid)  # draws from the global generator


class _OneSeed(Attributor):
    name = "one_seed"
    deterministic = False

    def attribute(self, target):
        import torch

        gen = torch.Generator().manual_seed(int(target.seeds[0]))  # the whole batch from the first unit's seed
        return torch.rand(len(target), *target.grid, generator=gen)


class _Batchy(Attributor):
    name = "batchy"

    def attribute(self, target):
        fmap = target.feature_map(target.images)
        return fmap + fmap.mean(0, keepdim=True)  # leaks information across the units of a batch


@pytest.mark.parametrize(
    "cls, failing",
    [
        (_Broken, {"contract (shape, dtype, finite)"}),
        (_Leaky, {"determinism under a seed", "batch independence", "no global state left"}),
        (_Batchy, {"batch independence"}),
        (_OneSeed, {"batch independence"}),
    ],
)
def test_validator_catches_contract_breaches(monkeypatch, cls, failing):
    monkeypatch.setitem(registry._REGISTRY, cls.name, cls)
    monkeypatch.setitem(registry._SOURCES, cls.name, "tests")
    checks = validate_attributor(cls.name, n_units=3)
    assert {c.name for c in checks if not c.passed} == failing


def test_validate_cli_exit_codes(monkeypatch, capsys):
    from cafe_bench.cli import main

    assert main(["validate-attributor", "activation", "--units", "3"]) == 0
    assert "activation: all checks passed" in capsys.readouterr().out
    monkeypatch.setitem(registry._REGISTRY, "broken", _Broken)
    monkeypatch.setitem(registry._SOURCES, "broken", "tests")
    assert main(["validate-attributor", "broken", "--units", "3"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["validate-attributor", "nope"]) == 2
    assert main(["validate-attributor", "activation", "--units", "0"]) == 2
