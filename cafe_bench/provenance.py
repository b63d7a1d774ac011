"""Run-level provenance: versions, git commit of this package, device, threads, date."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

LIBRARIES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "numpy",
    "scipy",
    "pandas",
    "safetensors",
    "captum",
    "shap",
    "lxt",
    "timm",
)


CODE_PATHS = ("cafe_bench", "pyproject.toml")
"""What of the checkout is code: the package and its dependencies."""


def package_git_commit() -> str | None:
    """Commit of the cafe_bench checkout this code runs from, or None; suffix ``-dirty`` if the code differs from it:
    a changed or new file under ``CODE_PATHS`` (results written elsewhere in the checkout, such as the boards a run
    regenerates, do not count)."""
    root = Path(__file__).resolve().parent.parent
    try:
        # only when this very file is tracked there: an installed copy inside another repository has no commit
        subprocess.run(
            ["git", "-C", str(root), "ls-files", "--error-unmatch", "cafe_bench/provenance.py"],
            capture_output=True,
            timeout=5,
            check=True,
        )
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def library_versions() -> dict:
    """Installed versions of the libraries that can change numbers (None when absent)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def collect(device: str) -> dict:
    """Provenance of a run on ``device``."""
    from cafe_bench import __version__

    dev = torch.device(device)
    return {
        "cafe_bench_version": __version__,
        "git_commit": package_git_commit(),
        "libraries": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def machine_facts(libraries=()) -> dict:
    """:func:`collect` for the CPU plus what a benchmark record needs to be read: CPU model and count, usable CPUs,
    total memory (MiB) and the load average when called; the versions of ``libraries`` too."""
    import os

    facts = collect("cpu")
    cpu_model = mem_total = None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu_model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
        with open("/proc/meminfo") as fh:
            mem_total = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal")), None)
    except OSError:
        pass
    facts.update(
        cpu_model=cpu_model or platform.processor() or None,
        cpu_count=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        memory_total_mib=None if mem_total is None else mem_total / 2**20,
        load_average_1_5_15_at_start=[round(v, 2) for v in os.getloadavg()],
    )
    for name in libraries:
        try:
            facts["libraries"][name] = version(name)
        except PackageNotFoundError:
            facts["libraries"][name] = None
    return facts
