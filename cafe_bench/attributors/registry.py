"""The attributor registry: built-ins by decorator (imported lazily), third parties by entry point.

A third-party package declares ``[project.entry-points."cafe_bench.attributors"] my_method =
"my_pkg.mod:MyAttributor"``; after ``pip install`` the name is listed and runnable.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from importlib.metadata import entry_points

from cafe_bench.errors import CafeBenchError, UnknownNameError

ENTRY_POINT_GROUP = "cafe_bench.attributors"

_BUILTINS = {
    "activation": "cafe_bench.attributors.basic:ActivationAttributor",
    "random": "cafe_bench.attributors.basic:RandomAttributor",
    "gradient": "cafe_bench.attributors.gradient:GradientAttributor",
    "grad_x_input": "cafe_bench.attributors.gradient:GradXInputAttributor",
    "integrated_gradients": "cafe_bench.attributors.captum_methods:IntegratedGradientsAttributor",
    "smoothgrad": "cafe_bench.attributors.captum_methods:SmoothGradAttributor",
    "occlusion": "cafe_bench.attributors.captum_methods:OcclusionAttributor",
    "kernel_shap": "cafe_bench.attributors.kernel_shap:KernelShapAttributor",
    "cp_lrp": "cafe_bench.attributors.lrp:CPLRPAttributor",
    "attnlrp": "cafe_bench.attributors.lrp:AttnLRPAttributor",
}
"""Built-in name -> ``module:Class``; imported on first use so ``import cafe_bench`` stays cheap."""

_REGISTRY: dict[str, type] = {}
_SOURCES: dict[str, str] = {}


def register_attributor(name: str):
    """Class decorator: register an ``Attributor`` subclass under ``name``.

    >>> @register_attributor("my_method")          # doctest: +SKIP
    ... class MyMethod(Attributor): ...
    """

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attributor name {name!r} is already registered by {_SOURCES[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        _SOURCES[name] = f"{cls.__module__}:{cls.__qualname__}"
        return cls

    return wrap


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _all_names() -> list[str]:
    return sorted(set(_BUILTINS) | set(_REGISTRY) | set(_entry_points()))


def list_attributors(pattern: str = "*") -> list[str]:
    """Names of all registered attributors matching a shell-style ``pattern`` (default all), sorted.

    >>> "gradient" in list_attributors("*grad*")
    True
    """
    return [n for n in _all_names() if fnmatch.fnmatchcase(n, pattern)]


def attributor_class(name: str) -> type:
    """The class registered as ``name``; raises UnknownNameError listing the valid names."""
    if name not in _REGISTRY:
        if name in _BUILTINS:
            module, attr = _BUILTINS[name].split(":")
            register_attributor(name)(getattr(importlib.import_module(module), attr))
        else:
            eps = _entry_points()
            if name in eps:
                dist = eps[name].dist
                source = f"{dist.name} {dist.version}" if dist is not None else eps[name].value
                try:
                    cls = eps[name].load()
                except Exception as exc:  # a broken plugin must not take the registry down
                    raise CafeBenchError(
                        f"attributor {name!r} from {source} failed to load: {type(exc).__name__}: {exc}"
                    ) from None
                register_attributor(name)(cls)
                _SOURCES[name] = source
    if name not in _REGISTRY:
        names = _all_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(f"unknown method {name!r}{hint}; valid: {', '.join(names)}")
    return _REGISTRY[name]


def get_attributor(name: str, **params):
    """An instance of attributor ``name`` configured with ``params`` (defaults otherwise)."""
    cls = attributor_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise CafeBenchError(f"attributor {name!r} cannot be built with {params or 'no parameters'}: {exc}") from None


def attributor_source(name: str) -> str:
    """Where ``name`` comes from: ``cafe-bench VERSION (built-in)``, ``distribution version`` for an installed
    plugin, ``module:Class`` for a class registered in-process."""
    cls = attributor_class(name)
    if name in _BUILTINS and _BUILTINS[name] == f"{cls.__module__}:{cls.__qualname__}":
        from cafe_bench import __version__

        return f"cafe-bench {__version__} (built-in)"
    return _SOURCES[name]
