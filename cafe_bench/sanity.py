"""Model-randomisation sanity check (Adebayo et al., 2018): do a method's maps depend on the model?

Cascading randomisation, per SAE layer L: starting at block L and moving down to block 0, the parameters of one
more block are redrawn at each stage (stage k: blocks k..L random, the blocks below, the embedding and the SAE
as trained); a last stage (``randomised_from = -1``) redraws the embedding too (patch projection, position and
class embeddings, pre-norm), so nothing of the trained model but the SAE is left. A redrawn parameter tensor
keeps its own mean and standard deviation (a normal draw, seeded), so the scale of every activation stays that
of the trained model. At each stage the method attributes the same units on the randomised model; the Spearman
rank correlation between its patch scores there and on the trained model is summarised by the median over the
units. A method whose maps barely change once every block up to L is random (``|median rho| > threshold`` at
stage 0, default 0.5) is flagged: its ranking does not explain the blocks. ``random`` is the control: its maps
never depend on the model, so it must be flagged. The residual stream carries the embedding past every block,
so a map can keep the image's imprint through the block stages; the embedding stage shows how much.

Units where a map is constant (a feature silent on the random model gives all-zero gradients) have no rank
correlation; they are counted and left out.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch

DEFAULT_THRESHOLD = 0.5
"""A method is flagged when the median |Spearman rho| with every block up to L random exceeds this."""


@dataclass(frozen=True)
class SanityRow:
    """One method x layer x stage."""

    method: str
    layer: int
    randomised_from: int
    """Blocks ``randomised_from..layer`` are random; -1: blocks 0..layer and the embedding."""
    median_rho: float | None
    n_units: int
    """Units with a defined correlation (both maps non-constant)."""
    n_undefined: int


def randomise_blocks(backbone, blocks, seed: int = 0, embedding: bool = False):
    """A copy of ``backbone`` whose ``blocks`` (indices) have every parameter tensor redrawn from a normal with the
    tensor's own mean and standard deviation (seed ``seed``); with ``embedding``, every parameter outside the blocks
    too. The original is untouched."""
    out = copy.deepcopy(backbone)
    in_blocks = {id(p) for block in out.blocks for p in block.parameters()}
    params = [p for index in sorted(blocks) for _, p in sorted(out.blocks[index].named_parameters())]
    if embedding:
        params += [p for _, p in sorted(out.named_parameters()) if id(p) not in in_blocks]
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for param in params:
            mean, std = param.mean().item(), (param.std().item() if param.numel() > 1 else 0.0)
            draw = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.copy_((mean + std * draw).to(param.dtype))
    return out.eval()


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def cascading_randomisation(
    suite,
    methods,
    layers=None,
    n_units: int = 8,
    seed: int = 0,
    progress: bool = True,
    baseline: str | None = None,
    method_args: dict | None = None,
    units=None,
):
    """Rows of :class:`SanityRow` for every method x layer x stage, on the first ``n_units`` units of each layer.

    Args:
        suite: a loaded suite (``cafe_bench.load_suite``).
        methods: attributor names.
        layers: SAE layers (default: all of the suite's).
        n_units: units per layer (default 8).
        seed: seed of the redrawn parameters and of the units' seeds (default 0).
        baseline: the baseline the methods see (default: the suite's).
        method_args: ``{method: {parameter: value}}`` as for :func:`cafe_bench.run` (default: every method's defaults).
        units: draw each layer's units from these (default: the suite's feature set).
    """
    from tqdm.auto import tqdm

    from cafe_bench.runner import build_attributors
    from cafe_bench.target import Target

    layers = suite.layers if layers is None else [int(layer) for layer in layers]
    suite.check_layers(layers)
    attributors = build_attributors(list(methods), method_args)
    pool = suite.units(layers) if units is None else list(units)
    rows = []
    total = sum(len(attributors) * (layer + 3) for layer in layers)
    bar = tqdm(total=total, desc="sanity", unit="map batch", disable=not progress)
    for layer in layers:
        layer_units = [u for u in pool if u.layer == layer][:n_units]
        trained = suite.target(layer_units, baseline=baseline, seed=seed)

        def scores(target, method):
            out = attributors[method].scores(target)
            bar.update(1)
            return out.detach().reshape(len(target), -1).cpu().numpy().astype(np.float64)

        reference = {m: scores(trained, m) for m in attributors}
        for start in range(layer, -2, -1):
            blocks = range(max(start, 0), layer + 1)
            backbone = randomise_blocks(suite.backbone, blocks, seed=seed, embedding=start < 0)
            target = Target(
                backbone,
                suite.saes,
                trained.units,
                trained.images,
                trained.baseline,
                trained.seeds,
                baseline_name=trained.baseline_name,
            )
            for method in attributors:
                new = scores(target, method)
                rhos = [_spearman(reference[method][i], new[i]) for i in range(len(layer_units))]
                defined = [r for r in rhos if r is not None]
                rows.append(
                    SanityRow(
                        method=method,
                        layer=layer,
                        randomised_from=start,
                        median_rho=float(np.median(defined)) if defined else None,
                        n_units=len(defined),
                        n_undefined=len(rhos) - len(defined),
                    )
                )
    bar.close()
    return rows


def check_sanity_args(methods, n_units, threshold, seed) -> None:
    """Raise CafeBenchError for an unknown method, a non-positive unit count, a threshold outside [0, 1] or a
    negative seed."""
    from cafe_bench.attributors.registry import attributor_class
    from cafe_bench.errors import CafeBenchError

    for method in methods:
        attributor_class(method)  # an unknown name raises, listing the valid ones
    if n_units < 1:
        raise CafeBenchError(f"--units must be a positive integer, got {n_units}")
    if not 0.0 <= threshold <= 1.0:
        raise CafeBenchError(f"--threshold must be in [0, 1], got {threshold}")
    if seed < 0:
        raise CafeBenchError(f"--seed must be a non-negative integer, got {seed}")


def flags(rows, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """{layer: {method: True when |median rho| > threshold with every block up to the layer random}}; a method
    with no defined correlation at that stage is not flagged (None)."""
    out: dict = {}
    for row in rows:
        if row.randomised_from != 0:
            continue
        value = None if row.median_rho is None else abs(row.median_rho) > threshold
        out.setdefault(row.layer, {})[row.method] = value
    return out


def to_frame(rows):
    """The rows as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame([asdict(r) for r in rows])
