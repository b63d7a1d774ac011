"""cafe_bench: causal benchmarks for attribution methods that explain SAE features of vision transformers.

The public API is imported lazily so that ``import cafe_bench`` stays cheap (no torch, captum, shap, lxt):

>>> import cafe_bench
>>> df = cafe_bench.run("tiny", methods=["activation"], progress=False)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
DEFAULT_SUITE = "relations"
"""The suite ``run``, ``sanity`` and ``validate-attributor`` use when none is named."""

_LAZY = {
    "run": "cafe_bench.runner:run",
    "load_suite": "cafe_bench.suites:load_suite",
    "list_suites": "cafe_bench.suites:list_suites",
    "Suite": "cafe_bench.suites:Suite",
    "Target": "cafe_bench.target:Target",
    "Unit": "cafe_bench.target:Unit",
    "Attributor": "cafe_bench.attributors.base:Attributor",
    "Cost": "cafe_bench.attributors.base:Cost",
    "register_attributor": "cafe_bench.attributors.registry:register_attributor",
    "list_attributors": "cafe_bench.attributors.registry:list_attributors",
    "get_attributor": "cafe_bench.attributors.registry:get_attributor",
    "summarize": "cafe_bench.leaderboard:summarize",
    "CafeBenchError": "cafe_bench.errors:CafeBenchError",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        try:  # submodules, e.g. cafe_bench.stats
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module 'cafe_bench' has no attribute {name!r}")
    module, attr = _LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
