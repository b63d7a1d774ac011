"""The memory budget of the curve engine: how many perturbed images go through the model at once.

The batch size follows from a budget in bytes (``--max-memory``) divided by an upper estimate of what one image
costs on its way to the deepest block read; nothing a user passes (steps, units, methods) can make one forward
pass larger than the budget allows. The default budget comes from the device: most of the free memory of a GPU, a
cache-sized working set on CPU.
"""

from __future__ import annotations

import re

import torch

from cafe_bench.errors import RunConfigError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20}
_UNITS.update({"g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40})
CPU_WORKING_SET = 64 * 2**20
"""The default CPU budget (64 MiB): on CPU the fastest batches are those whose working set is near the last-level
cache, not the largest that fit (2-core EPYC, 32 MiB L3: 24 units x 31 insertion steps of ``relations`` took
0.35-0.40 s at 16-128 images per batch and 0.66-0.98 s at 512-2048; ViT-B-32 8 x 48 deletion steps took 10.6 s at
16-32 and 12.8 s at 512)."""
MIN_BUDGET = 2**20
"""Budgets below 1 MiB are refused: not even a small model's single image fits."""


def parse_memory(value) -> int:
    """Bytes from ``2GB``, ``512MiB``, ``1.5g``, ``300000000`` (decimal units: kB, MB, GB, TB; binary: KiB, MiB,
    GiB, TiB); raises RunConfigError naming the format."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise RunConfigError(
                f"memory size {value!r} not understood; give a number of bytes with an optional unit: "
                "kB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. 2GB)"
            )
        number = int(float(match.group(1)) * _UNITS[unit])
    if number < MIN_BUDGET:
        raise RunConfigError(f"memory budget {value!r} is below the smallest usable one, 1MiB")
    return number


def default_budget(device) -> int:
    """The budget when none is given: on CUDA 80 % of the device's free memory, counting what torch's caching
    allocator holds but does not use as free (it is torch's to reuse; the driver counts it as taken); on CPU
    ``CPU_WORKING_SET``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.8 * (free + cached))
    return CPU_WORKING_SET


def bytes_per_image(backbone, layer: int, tokens: bool) -> int:
    """An upper estimate of the memory one perturbed image takes in a forward pass without gradients up to
    block ``layer``: the composed pixels (or mixed patch tokens), the residual stream, one block's working set
    (attention scores, q/k/v, the MLP's hidden layer, twice over for the nonlinearity) and the block's
    output, in the model's dtype, times a safety factor of 1.5. The depth does not change it: blocks run one after
    another, and only the read layers' outputs are kept."""
    h, w = backbone.image_size
    t = backbone.n_patches + backbone.n_prefix_tokens
    d = backbone.width
    heads = max(1, d // 64)
    weight = next(iter(backbone.parameters()), None)
    size = weight.element_size() if weight is not None else 4  # a backbone without parameters: fp32
    inputs = backbone.n_patches * d if tokens else 2 * 3 * h * w  # mixed tokens, or composed + normalised pixels
    block = 4 * t * d + 3 * t * d + 2 * 4 * t * d + heads * t * t  # stream, ln, qkv, attention, MLP hidden
    return int(1.5 * size * (inputs + block + 2 * t * d))


def images_per_batch(backbone, layer: int, tokens: bool, budget: int) -> int:
    """How many perturbed images fit ``budget`` bytes at once (at least 1)."""
    return max(1, int(budget) // bytes_per_image(backbone, layer, tokens))
