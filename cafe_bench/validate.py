"""``validate_attributor``: check a method against the contract before it gets a leaderboard row."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from cafe_bench.attributors.base import AttributorError
from cafe_bench.attributors.registry import attributor_class, get_attributor
from cafe_bench.errors import CafeBenchError

REFERENCE_METHOD = "gradient"
"""Method whose scores must be unchanged after the validated one ran."""


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    passed: bool
    detail: str


def _units(suite, n_units: int):
    """``n_units`` units taken round-robin over the suite's layers."""
    if n_units < 1:
        raise CafeBenchError(f"--units must be at least 1, got {n_units}")
    per_layer = [suite.units([layer]) for layer in suite.layers]
    units = [u for i in range(max(map(len, per_layer))) for layer_units in per_layer for u in layer_units[i : i + 1]]
    return units[:n_units]


def validate_attributor(name: str, suite="relations", n_units: int = 6, seed: int = 0) -> list[Check]:
    """Run the contract checks on ``n_units`` units of ``suite`` (default relations, 6 units, seed 0).

    Checks: output shape and dtype, finiteness, bit-identical scores under the same seed, a unit's scores
    independent of its batch, no global state left behind (the reference method's scores and the torch and
    numpy random states unchanged), and the time per unit. Returns the checks in order.
    """
    from cafe_bench.suites import Suite, load_suite

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    cls = attributor_class(name)
    units = _units(suite, n_units)
    checks = []
    reference_before = get_attributor(REFERENCE_METHOD).scores(suite.target(units, seed=seed))
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    try:
        first = get_attributor(name).scores(suite.target(units, seed=seed))
    except AttributorError as exc:
        return [Check("contract (shape, dtype, finite)", False, str(exc))]
    gh, gw = suite.backbone.grid
    checks.append(Check("shape and dtype", True, f"({len(units)}, {gh}, {gw}) floating point"))
    checks.append(Check("finite", True, "no NaN or inf"))
    rng_kept = torch.equal(torch_state, torch.random.get_rng_state()) and all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        for a, b in zip(np_state, np.random.get_state(), strict=True)
    )
    target = suite.target(units, seed=seed)
    t0 = time.perf_counter()  # the second call: imports and lazy set-up are done
    second = get_attributor(name).scores(target)
    per_unit = (time.perf_counter() - t0) / len(units)
    same = torch.equal(first, second)
    kind = "deterministic" if cls.deterministic else "seeded stochastic"
    checks.append(
        Check(
            "determinism under a seed",
            same,
            f"{kind}: " + ("bit-identical twice" if same else "scores differ between two runs with the same seed"),
        )
    )
    independent = all(
        torch.allclose(get_attributor(name).scores(suite.target([unit], seed=seed))[0], first[i], rtol=1e-4, atol=1e-6)
        for i, unit in enumerate(units)
    )
    checks.append(
        Check(
            "batch independence",
            independent,
            "a unit alone scores as in its batch"
            if independent
            else "a unit's scores change with the other units of its batch",
        )
    )
    reference_after = get_attributor(REFERENCE_METHOD).scores(suite.target(units, seed=seed))
    clean = torch.equal(reference_before, reference_after) and rng_kept
    detail = (
        "other methods' scores and the random states unchanged"
        if clean
        else (
            f"{REFERENCE_METHOD!r} scores changed after it ran"
            if not torch.equal(reference_before, reference_after)
            else "the global torch or numpy random state changed; draw from target.seeds instead"
        )
    )
    checks.append(Check("no global state left", clean, detail))
    checks.append(Check("time per unit", True, f"{per_unit * 1000:.1f} ms on {suite.device}"))
    return checks
