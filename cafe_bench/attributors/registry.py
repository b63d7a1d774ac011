"""The attributor registry: built-ins by decorator (imported lazily), third parties by entry point.

A third-party package declares ``[project.entry-points."cafe_bench.attributors"] my_method =
"my_pkg.mod:MyAttributor"``; after ``pip install`` the name is listed and runnable.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import json
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


def attributor_parameters(name: str) -> dict:
    """The keyword parameters of attributor ``name`` and their defaults (from its ``__init__``)."""
    cls = attributor_class(name)
    if cls.__init__ is object.__init__:
        return {}
    sig = inspect.signature(cls.__init__)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in list(sig.parameters.values())[1:]
        if p.kind in kinds
    }


def get_attributor(name: str, **params):
    """An instance of attributor ``name`` configured with ``params`` (defaults otherwise); an unknown parameter
    or a value the method refuses raises CafeBenchError naming the method's valid parameters."""
    cls = attributor_class(name)
    valid = attributor_parameters(name)
    unknown = [k for k in params if k not in valid]
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in valid.items()) or "none"
        raise CafeBenchError(f"unknown parameter {unknown[0]!r} for method {name!r}; valid: {listed}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise CafeBenchError(f"method {name!r} refuses {params}: {exc}") from None


def _parse_value(text: str):
    """A ``--method-args`` value: JSON (numbers, true/false, null, quoted strings) or else the bare string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_method_args(text: str | None) -> dict:
    """``'integrated_gradients:n_steps=64,method=riemann_trapezoid;smoothgrad:stdevs=0.1'`` ->
    ``{"integrated_gradients": {"n_steps": 64, "method": "riemann_trapezoid"}, "smoothgrad": {"stdevs": 0.1}}``.

    Raises CafeBenchError on malformed text (the keys are checked later, against each method).
    """
    out: dict[str, dict] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        method, sep, body = part.partition(":")
        if not sep or not method.strip():
            raise CafeBenchError(f"--method-args: expected METHOD:KEY=VALUE[,KEY=VALUE], got {part.strip()!r}")
        if method.strip() in out:
            raise CafeBenchError(f"--method-args names {method.strip()!r} twice; give its parameters in one section")
        params = out.setdefault(method.strip(), {})
        for item in body.split(","):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise CafeBenchError(f"--method-args: expected KEY=VALUE for {method.strip()!r}, got {item.strip()!r}")
            params[key.strip()] = _parse_value(value.strip())
    return out


def attributor_version(name: str) -> str | None:
    """Version of the package that provides ``name``: cafe_bench's for a built-in, the distribution's for a
    plugin, the class's ``version`` attribute (or None) for a class registered in-process."""
    cls = attributor_class(name)
    if name in _BUILTINS and _BUILTINS[name] == f"{cls.__module__}:{cls.__qualname__}":
        from cafe_bench import __version__

        return __version__
    eps = _entry_points()
    if name in eps and eps[name].dist is not None:
        return eps[name].dist.version
    return getattr(cls, "version", None)


def attributor_source(name: str) -> str:
    """Where ``name`` comes from: ``cafe-bench VERSION (built-in)``, ``distribution version`` for an installed
    plugin, ``module:Class`` for a class registered in-process."""
    cls = attributor_class(name)
    if name in _BUILTINS and _BUILTINS[name] == f"{cls.__module__}:{cls.__qualname__}":
        from cafe_bench import __version__

        return f"cafe-bench {__version__} (built-in)"
    return _SOURCES[name]
