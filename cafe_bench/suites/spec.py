"""Suite specs: a suite written as a TOML file, every field checked before any work starts.

A spec names a model (``LIBRARY:NAME`` and its weights), one SAE per layer (a path, optionally its format), a
frozen feature set, an image source and the protocol settings::

    name = "clip-vit-l14"
    version = "1"

    [model]
    name = "open_clip:ViT-L-14-quickgelu"
    pretrained = "${CAFE_BENCH_DATA}/clip/ViT-L-14-quickgelu-openai.bin"   # a local file, or "none"

    [images]
    source = "folder"                       # folder | list | scenes | photos (the rest of the table is its fields)
    path = "${CAFE_BENCH_DATA}/imagenet/val"

    [saes.22]                               # block index (0-based) -> SAE
    path = "${CAFE_BENCH_DATA}/saes/layer22"
    format = "saelens"                      # optional: sniffed from the files

    [feature_set]
    path = "features.json"                  # written by `cafe-bench featureset build`

    [protocol]
    baseline = "blur"
    steps = 16

Relative paths are relative to the TOML file; ``~`` and ``${VAR}`` are expanded (an unset variable is an error
naming it). Any table may carry ``provide = "..."``: the sentence shown when one of its files is missing, so a
shipped spec tells its user what to download and where to put it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cafe_bench.errors import SuiteError

TOP = {
    "name": (str, True),
    "version": ((str, int), True),
    "description": (str, False),
    "model": (dict, True),
    "images": (dict, True),
    "saes": (dict, True),
    "feature_set": (dict, True),
    "protocol": (dict, True),
}
"""Top-level keys: (type, required)."""
TABLES = {
    "model": {"name": (str, True), "pretrained": (str, True), "kwargs": (dict, False), "provide": (str, False)},
    "feature_set": {"path": (str, True), "provide": (str, False)},
    "protocol": {"baseline": (str, True), "steps": (int, True), "blur_sigma": ((float, int), False)},
}
SAE_KEYS = {"path": (str, True), "format": (str, False), "provide": (str, False)}
IMAGE_PATH_KEYS = ("path",)
"""Fields of an ``[images]`` table that are paths (resolved like the others)."""
_VAR = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class SAESpec:
    """One layer's SAE: its files, format (None: sniffed) and what to say when they are missing."""

    path: Path
    format: str | None = None
    provide: str | None = None


@dataclass(frozen=True)
class SuiteSpec:
    """A validated suite spec (paths resolved, variables expanded)."""

    source: Path
    """The TOML file."""
    name: str
    version: str
    model: str
    """``LIBRARY:NAME`` (see :func:`cafe_bench.models.load_backbone`)."""
    pretrained: str | Path
    """``"none"``, a package-provided tag the model library knows, or a resolved local file."""
    saes: dict[int, SAESpec]
    feature_set: Path
    images: dict
    """The image source kind under ``source`` and its fields, paths resolved."""
    protocol: dict
    model_kwargs: dict = field(default_factory=dict)
    description: str = ""
    provide: dict = field(default_factory=dict)
    """{"model" | "feature_set" | "images": sentence} shown when that table's file is missing."""


def _err(source: Path, message: str) -> SuiteError:
    return SuiteError(f"{source}: {message}")


def _check_keys(source: Path, table: dict, keys: dict, where: str) -> None:
    unknown = [k for k in table if k not in keys]
    if unknown:
        raise _err(source, f"unknown field '{where}{unknown[0]}'; valid: {', '.join(keys)}")
    for key, (kind, required) in keys.items():
        if key not in table:
            if required:
                raise _err(source, f"lacks field '{where}{key}'")
            continue
        value = table[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _err(source, f"field '{where}{key}' has the wrong type ({type(value).__name__})")


def expand(source: Path, value: str, where: str) -> str:
    """``value`` with ``~`` and ``${VAR}`` expanded; an unset variable raises SuiteError naming it and the field."""

    def sub(match):
        var = match.group(1) or match.group(2)
        if var not in os.environ:
            raise _err(source, f"field '{where}' uses ${{{var}}}, which is not set; set {var} to the folder it names")
        return os.environ[var]

    return os.path.expanduser(_VAR.sub(sub, value))


def resolve(source: Path, value: str, where: str) -> Path:
    """A path field: variables expanded, relative to the spec's folder."""
    path = Path(expand(source, value, where))
    return path if path.is_absolute() else (source.parent / path)


def read_spec(path) -> SuiteSpec:
    """Parse and validate a suite TOML; raises SuiteError naming the first missing, unknown or mistyped field.

    Files are not opened here (see :meth:`cafe_bench.suites.Suite.check_files`), so a spec can be read on a
    machine that lacks the weights and still say what to provide.
    """
    source = Path(path)
    try:
        doc = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise SuiteError(f"{source}: suite file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise _err(source, f"not valid TOML ({exc})") from None
    _check_keys(source, doc, TOP, "")
    for table, keys in TABLES.items():
        _check_keys(source, doc[table], keys, f"{table}.")
    images = dict(doc["images"])
    if not isinstance(images.get("source"), str):
        raise _err(source, "lacks field 'images.source' (folder, list, scenes or photos)")
    provide = {t: doc[t]["provide"] for t in ("model", "feature_set", "images") if "provide" in doc[t]}
    images.pop("provide", None)
    for key in IMAGE_PATH_KEYS:
        if key in images:
            if not isinstance(images[key], str):
                raise _err(source, f"field 'images.{key}' has the wrong type ({type(images[key]).__name__})")
            images[key] = resolve(source, images[key], f"images.{key}")
    saes = {}
    if not doc["saes"]:
        raise _err(source, "field 'saes' names no SAE; add a [saes.LAYER] table")
    for layer, table in doc["saes"].items():
        if not str(layer).isdigit() or not isinstance(table, dict):
            raise _err(source, f"saes must map block numbers to tables with a path, got {layer!r}")
        _check_keys(source, table, SAE_KEYS, f"saes.{layer}.")
        path = resolve(source, table["path"], f"saes.{layer}.path")
        saes[int(layer)] = SAESpec(path, table.get("format"), table.get("provide"))
    model = doc["model"]
    pretrained = model["pretrained"]
    if pretrained.lower() != "none":  # a file (relative to the spec) when it looks like a path or exists; else a tag
        path = resolve(source, pretrained, "model.pretrained")
        if path.exists() or any(c in pretrained for c in "/.$~"):
            pretrained = path
    protocol = dict(doc["protocol"])
    if protocol["steps"] < 1:
        raise _err(source, f"field 'protocol.steps' must be a positive integer, got {protocol['steps']}")
    return SuiteSpec(
        source=source,
        name=doc["name"],
        version=str(doc["version"]),
        model=model["name"],
        pretrained=pretrained,
        saes=dict(sorted(saes.items())),
        feature_set=resolve(source, doc["feature_set"]["path"], "feature_set.path"),
        images=images,
        protocol=protocol,
        model_kwargs=dict(model.get("kwargs", {})),
        description=doc.get("description", ""),
        provide=provide,
    )
