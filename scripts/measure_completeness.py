"""Measure how far integrated gradients is from completeness on every unit of a suite, and why.

Completeness says that the attributions of a unit sum to z_k(image) - z_k(baseline). The SAE's inference code is
``z = pre * (pre > threshold)`` (cafe_bench/sae/matryoshka.py): where z_k(baseline) == 0 the code jumps from 0
to the threshold theta where the straight path from the baseline crosses it, and the gradient never sees that
jump. The attributions then sum to about z_k(image) - theta instead of z_k(image) - 0.

For every unit the script computes, independently of captum, z_k(image) and z_k(baseline) with ``Target.forward``,
the number of off -> on switches of z_k on a dense grid of the path, and (for units off at the baseline) the
height of the jump, found by bisection on the path; it then compares the sum of the integrated-gradients
attributions (the registry's attributor with its default settings, pooled to patches) with both the completeness
target z_k(image) - z_k(baseline) and the jump-corrected target z_k(image) - jump. Units are split by whether
z_k(baseline) == 0. A convergence table over ``--n-steps-sweep`` shows that the error of units that stay on
along the path is float32 rounding at every n_steps, while the residual of the others shrinks with n_steps.

Example::

    python scripts/measure_completeness.py --out benchmarks/results/ig_completeness.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cafe_bench import load_suite
from cafe_bench.attributors.captum_methods import integrated_gradients
from cafe_bench.attributors.registry import get_attributor
from cafe_bench.provenance import collect

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "ig_completeness.json"


def describe(values) -> dict:
    """Count, mean and quantiles (keys min, q05, q25, median, q75, q95, max) of a 1-d array."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    names = ("min", "q05", "q25", "median", "q75", "q95", "max")
    return {
        "n": len(v),
        "mean": float(v.mean()),
        **{k: float(q) for k, q in zip(names, np.quantile(v, QUANTILES), strict=True)},
    }


@torch.no_grad()
def path_values(target, n_points: int) -> torch.Tensor:
    """z_k on ``n_points`` evenly spaced points of the straight path baseline -> image, (B, n_points) float64."""
    alphas = torch.linspace(0, 1, n_points, dtype=torch.float64)
    diff = target.images - target.baseline
    return torch.stack([target.forward(target.baseline + float(a) * diff).double() for a in alphas], dim=1)


@torch.no_grad()
def jump_heights(target, rows: list[int], n_iter: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """For units off at the baseline and on at the image: bisect the path for the switch from z_k == 0 to
    z_k > 0 and return (alpha of the switch, z_k just past it), each (len(rows),)."""
    if not rows:
        return np.zeros(0), np.zeros(0)
    idx = torch.tensor(rows)
    image, base = target.images[idx], target.baseline[idx]
    lo = torch.zeros(len(rows), dtype=torch.float64)
    hi = torch.ones(len(rows), dtype=torch.float64)
    z_hi = target.activations(image, idx).double()
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        a = mid.to(image.dtype).view(-1, 1, 1, 1)
        z = target.activations(base + a * (image - base), idx).double()
        on = z > 0
        hi = torch.where(on, mid, hi)
        z_hi = torch.where(on, z, z_hi)
        lo = torch.where(on, lo, mid)
    return hi.numpy(), z_hi.numpy()


def measure(suite_name: str, n_steps_sweep: list[int], n_path: int, device: str) -> dict:
    suite = load_suite(suite_name, device=device)
    units = suite.units()
    target = suite.target(units)
    method = get_attributor("integrated_gradients")
    scores = method.scores(target).double()
    total = scores.sum(dim=(1, 2)).cpu().numpy()
    with torch.no_grad():
        z_x = target.forward(target.images).double().cpu().numpy()
        z_b = target.forward(target.baseline).double().cpu().numpy()
    theta = np.array([float(suite.saes[u.layer].threshold) for u in units])
    dz = z_x - z_b
    off = z_b == 0
    on = ~off

    path = (path_values(target, n_path) > 0).cpu().numpy()
    switches_on = (~path[:, :-1] & path[:, 1:]).sum(1)
    switches_off = (path[:, :-1] & ~path[:, 1:]).sum(1)
    off_rows = np.flatnonzero(off & (z_x > 0)).tolist()
    alpha_jump, height = jump_heights(target, off_rows)

    rel_err = np.abs(total - dz) / np.abs(dz)
    residual = total[off] - (z_x[off] - theta[off])  # what is left once the jump is taken out
    residual_jump = total[off_rows] - (z_x[off_rows] - height)

    sweep = []
    for n in n_steps_sweep:
        t = integrated_gradients(target, n_steps=n, method=method.method).detach().double().sum(dim=(1, 2, 3))
        t = t.cpu().numpy()
        sweep.append(
            {
                "n_steps": n,
                "on_rel_error": describe((np.abs(t - dz) / np.abs(dz))[on]),
                "on_abs_error": describe(np.abs(t - dz)[on]),
                "off_abs_residual_over_theta": describe((np.abs(t - (z_x - theta)) / theta)[off]),
            }
        )

    per_unit = [
        {
            "unit": list(u.key()),
            "z_image": float(z_x[i]),
            "z_baseline": float(z_b[i]),
            "theta": float(theta[i]),
            "sum_attributions": float(total[i]),
            "completeness_rel_error": float(rel_err[i]),
            "path_switches_off_to_on": int(switches_on[i]),
            "path_switches_on_to_off": int(switches_off[i]),
        }
        for i, u in enumerate(units)
    ]
    for j, i in enumerate(off_rows):
        per_unit[i]["jump_alpha"] = float(alpha_jump[j])
        per_unit[i]["jump_height"] = float(height[j])

    return {
        "what": "integrated gradients completeness error |sum(attr) - (z(x) - z(b))| / |z(x) - z(b)| per unit",
        "suite": suite_name,
        "n_units": len(units),
        "baseline": suite.protocol_defaults["baseline"],
        "blur_sigma": suite.protocol_defaults.get("blur_sigma"),
        "attributor": {"name": "integrated_gradients", "params": method.params()},
        "thresholds": {str(layer): float(sae.threshold) for layer, sae in suite.saes.items()},
        "groups": {
            "z_baseline_positive": {
                "n_units": int(on.sum()),
                "completeness_rel_error": describe(rel_err[on]),
                "completeness_abs_error": describe(np.abs(total - dz)[on]),
                "sum_over_dz": describe((total / dz)[on]),
                "units_on_along_the_whole_path": int((on & (switches_on == 0) & (switches_off == 0)).sum()),
            },
            "z_baseline_zero": {
                "n_units": int(off.sum()),
                "completeness_rel_error": describe(rel_err[off]),
                "sum_over_dz": describe((total / dz)[off]),
                "dz_minus_sum_over_theta": describe(((dz - total) / theta)[off]),
                "residual_after_theta": describe(residual),
                "abs_residual_after_theta_over_theta": describe(np.abs(residual) / theta[off]),
                "units_with_one_off_to_on_switch": int((off & (switches_on == 1) & (switches_off == 0)).sum()),
                "jump_height_minus_theta": describe(height - theta[off_rows]),
                "residual_after_measured_jump": describe(residual_jump),
            },
        },
        "n_steps_sweep": sweep,
        "path_grid_points": n_path,
        "explanation": (
            "z = pre * (pre > theta). On units with z(baseline) > 0 the feature stays on along the whole path, z is "
            "smooth there and the attributions sum to z(x) - z(b) up to float32 rounding. On units with "
            "z(baseline) == 0 the path crosses pre == theta once; z jumps from 0 to theta there, the gradient "
            "misses the jump, and the attributions sum to z(x) - theta up to the quadrature error at the jump "
            "(it shrinks with n_steps). Their ratio sum / dz = 1 - theta / z(x) is small because z(x) of these "
            "units is close to theta."
        ),
        "per_unit": per_unit,
        "machine": collect(device),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="tiny", help="suite name or directory (default tiny)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON to write (default {DEFAULT_OUT})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--n-steps-sweep",
        default="8,16,32,64,128",
        help="comma-separated n_steps of the convergence table (default 8,16,32,64,128)",
    )
    parser.add_argument("--path-points", type=int, default=129, help="grid points on the path (default 129)")
    args = parser.parse_args(argv)
    sweep = [int(s) for s in args.n_steps_sweep.split(",") if s.strip()]
    result = measure(args.suite, sweep, args.path_points, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, group in result["groups"].items():
        err = group["completeness_rel_error"]
        ratio = group["sum_over_dz"]
        print(
            f"{name}: {group['n_units']} units, completeness rel. error median {err['median']:.3g} "
            f"(max {err['max']:.3g}), sum / dz median {ratio['median']:.3f}"
        )
    off = result["groups"]["z_baseline_zero"]
    print(
        f"z_baseline_zero: (dz - sum) / theta median {off['dz_minus_sum_over_theta']['median']:.3f}; "
        f"|sum - (z(x) - theta)| / theta median {off['abs_residual_after_theta_over_theta']['median']:.3g} "
        f"(max {off['abs_residual_after_theta_over_theta']['max']:.3g})"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
