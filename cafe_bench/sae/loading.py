"""Loading published SAEs: one loader per file format, registered by name and chosen by sniffing the files.

Every loader reads without executing pickled code (safetensors, or ``torch.load(weights_only=True)``); a
file that needs pickle, a truncated or corrupt file, or one of the wrong width is a one-line
:class:`SAEFormatError` naming the file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cafe_bench.errors import CafeBenchError, UnknownNameError


class SAEFormatError(CafeBenchError):
    """An SAE file that cannot be loaded: corrupt, truncated, pickle-only, of an unknown layout or width."""


@dataclass(frozen=True)
class SAEFormat:
    """A registered SAE file format."""

    name: str
    sniff: Callable[[Path], bool]
    """True when ``path`` (a file or directory) looks like this format."""
    load: Callable[[Path], object]
    """Build the :class:`cafe_bench.sae.base.SAE` from ``path``."""
    description: str = ""


_FORMATS: dict[str, SAEFormat] = {}
_BUILTIN_MODULES = (
    "cafe_bench.sae.formats.saelens",
    "cafe_bench.sae.formats.dictionary_learning",
    "cafe_bench.sae.formats.saev",
    "cafe_bench.sae.formats.vit_prisma",
)
"""Modules whose import registers the built-in formats (imported on first use)."""


def register_sae_format(fmt: SAEFormat) -> SAEFormat:
    """Add a format; a different format under a taken name is refused."""
    if fmt.name in _FORMATS and _FORMATS[fmt.name] != fmt:
        raise ValueError(f"SAE format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def list_sae_formats() -> list[str]:
    """Names of the registered SAE formats."""
    _load_builtins()
    return sorted(_FORMATS)


def load_sae(path, format: str | None = None):
    """The SAE stored at ``path`` (a file or a directory) in ``format`` (default: sniffed from the files).

    Raises SAEFormatError for a missing, corrupt, truncated or pickle-only file, UnknownNameError for an
    unknown format (naming the valid ones).
    """
    _load_builtins()
    path = Path(path)
    if not path.exists():
        raise SAEFormatError(f"{path}: no such SAE file or directory")
    if format is not None:
        if format not in _FORMATS:
            raise UnknownNameError(f"unknown SAE format {format!r}; valid: {', '.join(sorted(_FORMATS))}")
        return _FORMATS[format].load(path)
    matches = [f for f in _FORMATS.values() if f.sniff(path)]
    if not matches:
        raise SAEFormatError(
            f"{path}: not a known SAE layout; valid formats: {', '.join(sorted(_FORMATS))} (pass --sae-format)"
        )
    if len(matches) > 1:
        names = ", ".join(f.name for f in matches)
        raise SAEFormatError(f"{path}: looks like several SAE formats ({names}); pass --sae-format")
    return matches[0].load(path)


def torch_load_tensors(path: Path) -> dict:
    """A ``.pt``/``.pth`` state dict read with ``torch.load(weights_only=True)``: tensors and plain containers
    only, never pickled code. Raises SAEFormatError saying why a file is refused."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SAEFormatError(
            f"{path}: cannot be read as tensors alone: corrupt, or it pickles objects other than tensors "
            f"({str(exc).splitlines()[0][:120]}); refusing to unpickle code; re-save the state dict alone "
            "(torch.save(sae.state_dict(), ...)) or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: not a readable torch file (truncated or corrupt: {exc})") from None
    if not isinstance(obj, dict):
        raise SAEFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def safetensors_load(path: Path) -> dict:
    """Tensors of a safetensors file; SAEFormatError if it is truncated or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: not a readable safetensors file (truncated or corrupt: {exc})") from None


def check_width(sae, d_model: int, path, layer: int | None = None) -> None:
    """Raise SAEFormatError naming the file and both sizes when the SAE's ``d_in`` is not the model's width."""
    if int(sae.d_in) != int(d_model):
        where = f" at block {layer}" if layer is not None else ""
        raise SAEFormatError(
            f"{path}: SAE d_in {sae.d_in} does not match the model's width {d_model}{where}; "
            "this SAE was trained on another model or hook"
        )


def check_sae_at_block(sae, d_model: int, path, layer: int) -> None:
    """:func:`check_width`, then a warning when the SAE's files name another block than ``layer`` (its hook)."""
    import warnings

    check_width(sae, d_model, path, layer)
    hooked = sae.hook.layer
    if hooked is not None and int(hooked) != int(layer):
        warnings.warn(
            f"{path}: the SAE file says it was trained after block {hooked}, used here at block {layer} "
            f"(hook {sae.hook.name})",
            stacklevel=3,
        )
