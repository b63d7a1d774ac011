"""The ``cafe-bench`` command: parse, call the Python API, render. Errors a user can cause exit with 2."""

from __future__ import annotations

import argparse
import sys
import warnings

from cafe_bench.errors import CafeBenchError


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _layers(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {value!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like the rest of the command."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cafe-bench",
        description="Causal insertion/deletion benchmarks for attribution methods that explain SAE features "
        "of vision transformers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run methods x protocols on a suite and print the leaderboard",
        description="Attribute each unit's SAE feature activation to patches with every method, "
        "run insertion/deletion curves, store per-unit records and print mean AUC "
        "with 95%% clustered bootstrap CIs per method x layer.",
    )
    run.add_argument("--suite", default="tiny", help="built-in suite name or suite directory (default: tiny)")
    run.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated attributors (default: every built-in; see `cafe-bench methods`)",
    )
    run.add_argument("--protocols", type=_csv, default=None, help="insertion,deletion (default: both)")
    run.add_argument("--layers", type=_layers, default=None, help="comma-separated SAE layers (default: all)")
    run.add_argument("--baseline", default=None, help="blur (default), mean or zero")
    run.add_argument("--steps", type=int, default=None, help="curve steps S (default: the suite's, 16 for tiny)")
    run.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    run.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    run.add_argument(
        "--out", default=None, help="directory for results.jsonl and run.json (default: none, results are only printed)"
    )
    run.add_argument("--resume", action="store_true", help="continue the run stored in --out, skipping finished work")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    val = sub.add_parser(
        "validate-attributor",
        help="check a method against the contract; exit 1 on any failure",
        description="Run an attributor on a few units and check output shape and dtype, finiteness, "
        "determinism under a seed, batch independence, that it leaves no global state "
        "behind, and its time per unit.",
    )
    val.add_argument("name", help="registered method name (see `cafe-bench methods`)")
    val.add_argument("--suite", default="tiny", help="suite to validate on (default: tiny)")
    val.add_argument("--units", type=int, default=6, help="units to run (default: 6)")
    sub.add_parser("methods", help="list registered attribution methods with their source")
    sub.add_parser("suites", help="list built-in suites")
    return parser


def _cmd_run(args) -> int:
    from cafe_bench.leaderboard import render_markdown, summarize
    from cafe_bench.runner import run

    records = run(
        suite=args.suite,
        methods=args.methods,
        protocols=args.protocols,
        layers=args.layers,
        baseline=args.baseline,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        out=args.out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(render_markdown(summarize(records, seed=args.seed)), flush=True)
    failed = records[records["status"].str.startswith("failed")]
    if len(failed):
        print(f"{len(failed)} records failed; see their status in {args.out or 'the records'}", file=sys.stderr)
    if args.out:
        print(f"results: {args.out}/results.jsonl, provenance: {args.out}/run.json", file=sys.stderr)
    return 0


def _cmd_validate(args) -> int:
    from cafe_bench.validate import validate_attributor

    checks = validate_attributor(args.name, suite=args.suite, n_units=args.units)
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<26} {check.detail}")
    failed = [c for c in checks if not c.passed]
    print(f"{args.name}: {'FAILED ' + str(len(failed)) + ' check(s)' if failed else 'all checks passed'}")
    return 1 if failed else 0


def _cmd_methods(_args) -> int:
    from cafe_bench.attributors.registry import attributor_source, get_attributor, list_attributors

    n_patches = 64  # the tiny suite's 8 x 8 grid
    print(f"{'method':<22} {'passes/unit (P=64)':<20} {'source':<28} description")
    for name in list_attributors():
        method = get_attributor(name)
        cost = method.cost(n_patches)
        doc = (type(method).__doc__ or "").strip().splitlines()
        passes = f"{cost.forward} fwd + {cost.backward} bwd"
        print(f"{name:<22} {passes:<20} {attributor_source(name):<28} {doc[0] if doc else ''}")
    return 0


def _cmd_suites(_args) -> int:
    from cafe_bench.suites import list_suites

    print("\n".join(list_suites()))
    return 0


def main(argv=None) -> int:
    """Entry point of ``cafe-bench``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {"run": _cmd_run, "validate-attributor": _cmd_validate, "methods": _cmd_methods, "suites": _cmd_suites}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return handlers[args.command](args)
    except CafeBenchError as exc:
        print(f"cafe-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cafe-bench: interrupted; finished batches are stored, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
