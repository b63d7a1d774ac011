"""The ``cafe-bench`` command: parse, call the Python API, render. Errors a user can cause exit with 2."""

from __future__ import annotations

import argparse
import sys
import warnings

from cafe_bench import DEFAULT_SUITE
from cafe_bench.errors import CafeBenchError
from cafe_bench.featuresets import command as featureset_command


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


def _stats_options(parser) -> None:
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap replicates (default: 1000)")
    parser.add_argument("--ci", default="percentile", help="percentile (default) or bca")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")


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
        "with 95% clustered bootstrap CIs per method x layer.",
    )
    run.add_argument(
        "suite_positional",
        nargs="?",
        default=None,
        metavar="SUITE",
        help="built-in suite name (relations, tiny, photos), a suite .toml file or a suite directory (default: "
        "relations); "
        "the same as --suite",
    )
    run.add_argument("--suite", default=None, help="the same as SUITE (default: relations)")
    run.add_argument(
        "--methods",
        type=_csv,
        default=None,
        help="comma-separated attributors (default: every built-in; see `cafe-bench methods`)",
    )
    run.add_argument(
        "--protocols",
        type=_csv,
        default=None,
        help="insertion,deletion (default: both); also insertion_lerf, deletion_lerf (least relevant first)",
    )
    run.add_argument(
        "--method-args",
        default=None,
        metavar="SPEC",
        help="method parameters, e.g. 'integrated_gradients:n_steps=64;smoothgrad:stdevs=0.1,nt_samples=8' "
        "(validated; recorded; part of what `compare` checks)",
    )
    run.add_argument("--layers", type=_layers, default=None, help="comma-separated SAE layers (default: all)")
    run.add_argument(
        "--baseline",
        default=None,
        help="the suite's (default), blur, mean, zero or road (noisy linear imputation, ROAD)",
    )
    run.add_argument(
        "--steps",
        type=int,
        default=None,
        help="curve steps S in 1..P patches (default: the suite's, 32 for relations, 16 for tiny)",
    )
    run.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    run.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    run.add_argument(
        "--out", default=None, help="directory for results.jsonl and run.json (default: none, results are only printed)"
    )
    run.add_argument("--resume", action="store_true", help="continue the run stored in --out, skipping finished work")
    run.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N (0 <= I < N; units split by a hash of their key) into OUT/shards/I-of-N; "
        "join the finished shards with `cafe-bench merge OUT`",
    )
    run.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory one forward pass of perturbed images may take, e.g. 2GB or 512MiB; it sets the batch size "
        "(default: on CUDA 80%% of the free memory; on CPU 64MiB, cache-sized batches being the fastest there)",
    )
    run.add_argument(
        "--precision",
        default="fp32",
        help="fp32 (default), bf16 or fp16: autocast of the curves' forward passes (attributions stay fp32); "
        "recorded, and runs of different precision are not compared",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    val = sub.add_parser(
        "validate-attributor",
        help="check a method against the contract; exit 1 on any failure",
        description="Run an attributor on a few units and check output shape and dtype, finiteness, "
        "determinism under a seed, batch independence, that it leaves no global state "
        "behind, and its time per unit.",
    )
    val.add_argument("name", help="registered method name (see `cafe-bench methods`)")
    val.add_argument("--suite", default=DEFAULT_SUITE, help=f"suite to validate on (default: {DEFAULT_SUITE})")
    val.add_argument("--units", type=int, default=6, help="units to run (default: 6)")
    board = sub.add_parser(
        "leaderboard",
        help="tables of mean AUC with clustered bootstrap CIs from result dirs",
        description="Read one or more result directories (same suite, protocol config, seed and units) and "
        "print methods x layers x protocols: mean AUC with its 95% clustered bootstrap CI, the best per column in "
        "bold, methods whose CI overlaps the best's marked † (tied). Methods are ranked on the units every ranked "
        "method finished; a method with failed records is shown with its failure count and not ranked. Columns "
        "n_failed and n_dead (csv) count failed and dead-feature units.",
    )
    board.add_argument("dirs", nargs="+", metavar="DIR", help="directories written by `cafe-bench run --out`")
    board.add_argument("--format", default="md", help="md (default), csv, latex or html")
    board.add_argument(
        "--by",
        default="method",
        help="method (default: a row per method, a column per layer x protocol) or layer (a row per layer x method)",
    )
    _stats_options(board)
    board.add_argument(
        "--save",
        default=None,
        metavar="STEM",
        help="also write STEM.json (the board with every unit's AUC, for `compare`) and STEM.md",
    )
    board.add_argument(
        "--stratify",
        default=None,
        help="locality: one board for local and one for non-local units (needs `cafe-bench validity DIR` first)",
    )
    board.add_argument(
        "--allow-mixed",
        action="store_true",
        help="table runs of different seeds, layers or units (refused by default: they are not like with like)",
    )
    paired = sub.add_parser(
        "paired",
        help="every method against a reference on identical units, Holm-corrected",
        description="Mean paired AUC difference of each method against --reference on the same units (positive = "
        "better), its clustered bootstrap CI, a p-value, the Holm-adjusted p-value over all comparisons shown, and "
        "the probability of improvement, per layer and protocol.",
    )
    paired.add_argument("dirs", nargs="+", metavar="DIR", help="directories written by `cafe-bench run --out`")
    paired.add_argument("--reference", default="activation", help="reference method (default: activation)")
    paired.add_argument("--format", default="md", help="md (default) or csv")
    _stats_options(paired)
    cmp = sub.add_parser(
        "compare",
        help="regression gate: exit 1 if any unit's AUC moved against a committed board",
        description="Compare result directories with a board written by `leaderboard --save` (the board holds every "
        "unit's AUC, so it is the only file a CI needs). Exit codes: 0 pass; 1 a regression, a failed record, or a "
        "unit missing from or added to the run; 2 a mistake or a run that is not comparable (another suite version, "
        "model, SAE or feature set, steps, baseline, method parameters, or seed when a seeded method is compared), "
        "with one line naming the difference. Rules: paired (default) fails a method x layer x protocol whose mean "
        "AUC over the paired units moved against the protocol's direction by more than --tolerance; unit fails on "
        "any single unit that did; ci compares runs that are not reruns (another seed or feature set): the mean "
        "left the board's between-feature CI and moved by more than --floor.",
    )
    cmp.add_argument("dirs", nargs="+", metavar="DIR", help="directories written by `cafe-bench run --out`")
    cmp.add_argument("--board", default=None, metavar="BOARD", help="board JSON, e.g. leaderboards/tiny.json")
    cmp.add_argument("--baseline", default=None, metavar="BOARD", help=argparse.SUPPRESS)  # deprecated alias
    cmp.add_argument("--rule", default="paired", help="paired (default), unit or ci")
    cmp.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="AUC change allowed by the paired and unit rules (default: the measured rerun noise bound, see README)",
    )
    cmp.add_argument("--floor", type=float, default=0.02, help="ci rule: smallest mean AUC move that counts (0.02)")
    cmp.add_argument("--methods", type=_csv, default=None, help="compare only these methods (default: all)")
    agree = sub.add_parser(
        "baselines",
        help="Kendall tau between method rankings under different baselines",
        description="Given runs that differ only in --baseline (blur, mean, zero, road), print the Kendall tau "
        "between their method rankings for each pair and protocol. With --suite and --out, first run the suite once "
        "per baseline into OUT/BASELINE (resuming what is there), then compare those runs.",
    )
    agree.add_argument("dirs", nargs="*", metavar="DIR", help="one run directory per baseline")
    agree.add_argument("--suite", default=None, help="run this suite once per baseline first (needs --out)")
    agree.add_argument("--out", default=None, help="with --suite: where the runs go, one directory per baseline")
    agree.add_argument(
        "--baselines", type=_csv, default=None, help="with --suite: baselines to run (default: blur,mean,zero,road)"
    )
    agree.add_argument("--methods", type=_csv, default=None, help="with --suite: attributors (default: every built-in)")
    agree.add_argument("--layers", type=_layers, default=None, help="with --suite: SAE layers (default: all)")
    agree.add_argument(
        "--units-per-layer", type=int, default=None, help="with --suite: the first N units of each layer (default: all)"
    )
    agree.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    plot = sub.add_parser(
        "plot",
        help="figures of a run: curves with CI bands, AUC by layer, one unit's ERF next to its activation map",
        description="Write PNG and SVG figures of a result directory: mean insertion and deletion curves with 95% "
        "CI bands per method, mean AUC per layer with error bars, and for one unit (default: the first) the image "
        "with its activation map and each method's ERF map.",
    )
    plot.add_argument("dir", metavar="DIR", help="a directory written by `cafe-bench run --out`")
    plot.add_argument("--out", default=None, help="directory for the figures (default: DIR/figures)")
    plot.add_argument("--format", type=_csv, default=["png", "svg"], help="png,svg (default: both)")
    plot.add_argument(
        "--unit", type=_csv, default=None, metavar="L,F,IMG,TOKEN", help="unit of the ERF figure (IMG: its image id)"
    )
    plot.add_argument(
        "--suite", default=None, help="the run's suite (a .toml file or directory) when it is not a built-in one"
    )
    plot.add_argument("--methods", type=_csv, default=None, help="methods of the ERF figure (default: up to 4)")
    _stats_options(plot)
    sae = sub.add_parser(
        "sae",
        help="load an SAE in a published format and print what it is",
        description="Load an SAE from its files (SAELens, dictionary_learning, saev or ViT-Prisma; the format is "
        "sniffed from the files unless --sae-format is given), without executing pickled code, and print its "
        "format, sizes, hook and input normalisation. With --d-model, check its width against the model's.",
    )
    sae.add_argument("path", metavar="PATH", help="the SAE's file or directory")
    sae.add_argument("--sae-format", default=None, help="format name (default: sniffed); see the list in --help")
    sae.add_argument("--d-model", type=int, default=None, help="the model's width at the hooked block, to check")
    sanity = sub.add_parser(
        "sanity",
        help="model-randomisation sanity check: do a method's maps change when the model is random?",
        description="Cascading randomisation (Adebayo et al., 2018): per SAE layer L, redraw the parameters of blocks "
        "L, L..L-1, ..., L..0, then the embedding too (each tensor from a normal with its own mean and std, seeded), "
        "attribute the same units, and report the median Spearman correlation with the trained model's maps. A method "
        "whose |median rho| with every block up to L random exceeds --threshold is flagged; exit 1 when any method "
        "other than the control `random` (whose maps never depend on the model) is flagged.",
    )
    sanity.add_argument(
        "suite",
        nargs="?",
        default=DEFAULT_SUITE,
        help=f"suite name, .toml file or directory (default: {DEFAULT_SUITE})",
    )
    sanity.add_argument(
        "--methods", type=_csv, default=None, help="comma-separated attributors (default: every built-in)"
    )
    sanity.add_argument("--layers", type=_layers, default=None, help="comma-separated SAE layers (default: all)")
    sanity.add_argument(
        "--units", type=int, default=8, help="units per layer, the first of the feature set (default: 8)"
    )
    sanity.add_argument("--threshold", type=float, default=0.5, help="flag above this |median rho| (default: 0.5)")
    sanity.add_argument("--seed", type=int, default=0, help="seed of the redrawn parameters (default: 0)")
    sanity.add_argument("--out", default=None, metavar="FILE", help="also write the rows and flags as JSON")
    sanity.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    val = sub.add_parser(
        "validity",
        help="does the run measure what it claims? non-locality, ground truth, oracle, sanity -> DIR/validity.json",
        description="Per layer of the run in DIR: the share of non-local units (single-patch occlusion mass outside "
        "the token's 3x3 neighbourhood > 0.5), each method's agreement with exact object-level Shapley values and "
        "Kendall's tau between the AUC ranking and that ground-truth ranking, the greedy oracle's AUC and normalised "
        "AUC = (AUC - random) / (oracle - random) with a clustered bootstrap CI, and the model-randomisation sanity "
        "check; at top level the non-locality criterion's precision and recall against the exact truth. Ground "
        "truth and oracle come from the suite's frozen reference (the built-in `relations`); other suites get "
        "non-locality and sanity only. Writes DIR/validity.json and prints a summary.",
    )
    val.add_argument("dir", metavar="DIR", help="a directory written by `cafe-bench run --out`")
    val.add_argument("--suite", default=None, help="the run's suite, if not the built-in it names")
    val.add_argument(
        "--sanity-units", type=int, default=8, help="units per layer of the sanity check (default: 8; 0 skips it)"
    )
    val.add_argument("--n-resamples", type=int, default=1000, help="bootstrap replicates (default: 1000)")
    val.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the sanity check (default: 0)")
    val.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    merge = sub.add_parser(
        "merge",
        help="join the finished shards of a run (cafe-bench run --shard I/N --out DIR) into DIR",
        description="Check that every shard under DIR/shards/ is there, finished and of the same config, then write "
        "DIR/results.jsonl (records in a canonical order), DIR/scores.npz and DIR/run.json (each shard's provenance "
        "and timings under `shards`). Missing or unfinished shards are named (continue them with --resume).",
    )
    merge.add_argument("dir", metavar="DIR", help="the --out of the sharded run")
    rep = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run: board, curves, validity, ERF maps",
        description="Write one HTML file (figures embedded, no external resources) with the board, the curves, "
        "non-locality by layer, sanity flags, oracle and normalised scores, and ERF vs activation maps of the "
        "units in decreasing order of non-locality. Needs DIR/validity.json (`cafe-bench validity DIR`).",
    )
    rep.add_argument("dir", metavar="DIR", help="a directory written by `cafe-bench run --out`")
    rep.add_argument("--out", required=True, metavar="FILE.html", help="the page to write")
    rep.add_argument("--suite", default=None, help="the run's suite, if not the built-in it names")
    rep.add_argument(
        "--units", type=int, default=3, help="units shown with their maps, most non-local first (default: 3)"
    )
    sub.add_parser("methods", help="list registered attribution methods with their source")
    sub.add_parser("suites", help="list built-in suites")
    featureset_command.add_parser(sub)
    return parser


def _cmd_run(args) -> int:
    from cafe_bench.attributors.registry import parse_method_args
    from cafe_bench.leaderboard import render_markdown, summarize
    from cafe_bench.runner import failure_summary, run
    from cafe_bench.shards import distributed_run, torchrun_rank

    if args.suite and args.suite_positional and args.suite != args.suite_positional:
        raise CafeBenchError(f"two suites given ({args.suite_positional} and --suite {args.suite}); give one")
    options = dict(
        suite=args.suite or args.suite_positional or DEFAULT_SUITE,
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
        method_args=parse_method_args(args.method_args),
        max_memory=args.max_memory,
        precision=args.precision,
    )
    if torchrun_rank() is not None:  # one of several processes started by torchrun
        if args.shard:
            raise CafeBenchError("--shard and torchrun both split the run; give one")
        if not args.out:
            raise CafeBenchError("a torchrun run needs --out: each rank stores its shard there")
        records = distributed_run(**options)
        if records is None:  # not rank 0: rank 0 merges and prints
            return 0
    else:
        records = run(**options, shard=args.shard)
    print(render_markdown(summarize(records, seed=args.seed)), flush=True)
    if args.out:
        from cafe_bench.shards import parse_shard, shard_dir

        where = shard_dir(args.out, *parse_shard(args.shard)) if args.shard else args.out
        print(f"results: {where}/results.jsonl, provenance: {where}/run.json", file=sys.stderr)
    failures = failure_summary(records.to_dict("records"))
    if failures:
        print("cafe-bench: some records failed (exit 1); they are retried with --resume:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _cmd_validate(args) -> int:
    from cafe_bench.validate import validate_attributor

    checks = validate_attributor(args.name, suite=args.suite, n_units=args.units)
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<26} {check.detail}")
    failed = [c for c in checks if not c.passed]
    print(f"{args.name}: {'FAILED ' + str(len(failed)) + ' check(s)' if failed else 'all checks passed'}")
    return 1 if failed else 0


def _cmd_leaderboard(args) -> int:
    from cafe_bench.files import write_json_atomic, write_text_atomic
    from cafe_bench.leaderboard import FORMATS, board, render, summarize
    from cafe_bench.results import check_board_source, read_runs

    if args.format not in FORMATS:
        raise CafeBenchError(f"unknown format {args.format!r}; valid: {', '.join(FORMATS)}")
    if args.by not in ("method", "layer"):
        raise CafeBenchError(f"unknown --by {args.by!r}; valid: method, layer")
    statistics = {"n_resamples": args.n_resamples, "level": 0.95, "seed": args.seed, "ci_method": args.ci}
    records, run_doc = read_runs(args.dirs, allow_mixed=args.allow_mixed)
    if args.save:
        check_board_source(args.dirs, records)  # before anything is written
    if args.stratify not in (None, "locality"):
        raise CafeBenchError(f"unknown --stratify {args.stratify!r}; valid: locality")
    if args.stratify and args.save:
        raise CafeBenchError("--stratify and --save cannot be combined: a saved board holds every unit")
    if args.stratify and args.format != "md":
        raise CafeBenchError(f"--stratify prints one markdown board per stratum; valid --format: md, got {args.format}")
    try:
        if args.stratify:
            from cafe_bench.validity import stratify_locality

            strata = stratify_locality(records, args.dirs)
            text = "".join(
                f"\n{name} units ({group[['layer', 'feature', 'image_id', 'token']].drop_duplicates().shape[0]}):\n\n"
                + render(summarize(group.drop(columns="stratum"), **statistics), args.format, by=args.by)
                for name, group in strata.groupby("stratum", sort=True)
            )
            sys.stdout.write(text)
            return 0
        summary = summarize(records, **statistics)
    except ValueError as exc:
        raise CafeBenchError(str(exc)) from None
    text = render(summary, args.format, by=args.by)
    if args.format == "md":
        from cafe_bench.validity import board_validity_text

        text += board_validity_text(args.dirs)
    if args.save:
        from pathlib import Path

        from cafe_bench.validity import board_validity, board_validity_text

        stem = Path(args.save)
        doc = board(summary, run_doc, statistics, records)
        extra = board_validity(args.dirs)
        if extra is not None:
            doc["validity"] = extra
        write_json_atomic(stem.with_name(stem.name + ".json"), doc)
        md = render(summary, "md", by=args.by) + board_validity_text(args.dirs, hint=False)
        write_text_atomic(stem.with_name(stem.name + ".md"), md)
    sys.stdout.write(text)
    return 0


def _cmd_paired(args) -> int:
    from cafe_bench.leaderboard import paired_comparisons
    from cafe_bench.results import read_runs

    if args.format not in ("md", "csv"):
        raise CafeBenchError(f"unknown format {args.format!r}; valid: md, csv")
    records, _ = read_runs(args.dirs)
    try:
        table = paired_comparisons(
            records, args.reference, n_resamples=args.n_resamples, seed=args.seed, ci_method=args.ci
        )
    except ValueError as exc:
        raise CafeBenchError(str(exc)) from None
    if args.format == "csv":
        sys.stdout.write(table.to_csv(index=False, float_format="%.6g"))
    else:
        print(table.to_markdown(index=False, floatfmt=".4g"))
    return 0


def _cmd_compare(args) -> int:
    from cafe_bench.compare import DEFAULT_TOLERANCE, RULES, compare

    if args.rule not in RULES:
        raise CafeBenchError(f"unknown --rule {args.rule!r}; valid: {', '.join(RULES)}")
    if args.baseline is not None:
        if args.board is not None:
            raise CafeBenchError("give the board once: --board (--baseline is its deprecated alias)")
        print("cafe-bench: warning: --baseline is deprecated; use --board", file=sys.stderr)
    board = args.board or args.baseline
    if board is None:
        raise CafeBenchError("--board BOARD is required (a board JSON written by `leaderboard --save`)")
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    try:
        result = compare(args.dirs, board, rule=args.rule, tolerance=tolerance, floor=args.floor, methods=args.methods)
    except ValueError as exc:
        raise CafeBenchError(str(exc)) from None
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for finding in result.findings:
        print(finding)
    compared = f"{result.n_rows} method x layer x protocol rows, {result.n_units} units, rule {args.rule}"
    if result.findings:
        print(f"FAIL: {len(result.findings)} finding(s) against {board} ({compared})")
        return 1
    print(f"PASS: no regression against {board} ({compared})")
    return 0


def _cmd_baselines(args) -> int:
    from cafe_bench.sensitivity import ALL_BASELINES, baseline_agreement, run_baselines

    dirs = list(args.dirs)
    if args.suite is not None:
        if args.out is None:
            raise CafeBenchError("--suite needs --out: the directory that holds one run per baseline")
        if args.units_per_layer is not None and args.units_per_layer < 1:
            raise CafeBenchError(f"--units-per-layer must be a positive integer, got {args.units_per_layer}")
        dirs += run_baselines(
            args.suite,
            args.out,
            args.baselines or ALL_BASELINES,
            args.methods,
            args.layers,
            args.units_per_layer,
            not args.no_progress,
        )
    elif not dirs:
        raise CafeBenchError("give run directories (one per baseline), or --suite and --out to run them")
    print(baseline_agreement(dirs).to_markdown(index=False, floatfmt=".3f"))
    return 0


def _cmd_plot(args) -> int:
    from pathlib import Path

    from cafe_bench.plots import plot_run

    out = args.out or Path(args.dir) / "figures"
    paths = plot_run(
        args.dir,
        out,
        formats=args.format,
        unit=args.unit,
        methods=args.methods,
        suite=args.suite,
        n_resamples=args.n_resamples,
        seed=args.seed,
        ci_method=args.ci,
    )
    for path in paths:
        print(path)
    return 0


def _cmd_sae(args) -> int:
    from cafe_bench.sae import load_sae
    from cafe_bench.sae.loading import check_width

    sae = load_sae(args.path, format=args.sae_format)
    if args.d_model is not None:
        check_width(sae, args.d_model, args.path)
    for key, value in sae.describe().items():
        print(f"{key:<14} {value}")
    return 0


def _cmd_methods(_args) -> int:
    from cafe_bench.attributors.registry import attributor_source, get_attributor, list_attributors

    n_patches = 64  # the 8 x 8 grid of the built-in scene suites
    print(f"{'method':<22} {'passes/unit (P=64)':<20} {'source':<28} description")
    for name in list_attributors():
        try:
            method = get_attributor(name)
        except CafeBenchError as exc:
            print(f"{name:<22} {'-':<20} {'(failed to load)':<28} {exc}")
            continue
        cost = method.cost(n_patches)
        doc = (type(method).__doc__ or "").strip().splitlines()
        passes = f"{cost.forward} fwd + {cost.backward} bwd"
        print(f"{name:<22} {passes:<20} {attributor_source(name):<28} {doc[0] if doc else ''}")
    return 0


def _cmd_suites(_args) -> int:
    from cafe_bench.suites import list_suites

    print("\n".join(list_suites()))
    return 0


def _cmd_sanity(args) -> int:
    from cafe_bench.files import write_json_atomic
    from cafe_bench.runner import DEFAULT_METHODS
    from cafe_bench.sanity import cascading_randomisation, check_sanity_args, flags, to_frame
    from cafe_bench.suites import load_suite

    methods = args.methods or list(DEFAULT_METHODS)
    check_sanity_args(methods, args.units, args.threshold, args.seed)
    suite = load_suite(args.suite)
    rows = cascading_randomisation(suite, methods, args.layers, args.units, args.seed, not args.no_progress)
    frame = to_frame(rows)
    table = frame.pivot_table(index=["layer", "method"], columns="randomised_from", values="median_rho", dropna=False)
    table = table[sorted(table.columns, reverse=True)]
    table.columns = [f"blocks {c}..L random" if c >= 0 else "and the embedding" for c in table.columns]
    print(table.reset_index().to_markdown(index=False, floatfmt=".3f"))
    print("median Spearman rho of each method's maps with the trained model's (nan: every map constant)")
    flagged = flags(rows, args.threshold)
    bad = sorted({(layer, m) for layer, per in flagged.items() for m, f in per.items() if f and m != "random"})
    for layer, method in bad:
        print(f"FLAG  layer {layer}: {method}'s maps barely change with blocks 0..{layer} random", file=sys.stderr)
    if "random" in methods and not all(per.get("random") for per in flagged.values()):
        print("cafe-bench: warning: the control `random` was not flagged; the check is not working", file=sys.stderr)
    if args.out:
        doc = {"suite": suite.name, "threshold": args.threshold, "seed": args.seed, "n_units": args.units}
        write_json_atomic(args.out, {**doc, "rows": frame.to_dict("records"), "flags": flagged})
    return 1 if bad else 0


def _cmd_validity(args) -> int:
    from cafe_bench.suites import load_suite
    from cafe_bench.validity import layer_table, read_validity, validity_table, write_validity

    if args.sanity_units < 0:
        raise CafeBenchError(f"--sanity-units must be 0 or a positive integer, got {args.sanity_units}")
    if args.n_resamples < 1:
        raise CafeBenchError(f"--n-resamples must be a positive integer, got {args.n_resamples}")
    suite = load_suite(args.suite) if args.suite else None
    path = write_validity(
        args.dir,
        suite=suite,
        sanity_units=args.sanity_units,
        n_resamples=args.n_resamples,
        seed=args.seed,
        progress=not args.no_progress,
    )
    doc = read_validity(args.dir)
    print(layer_table(doc).to_markdown(index=False, disable_numparse=True))
    print()
    print(validity_table(doc).to_markdown(index=False, disable_numparse=True))
    check = doc.get("nonlocality_check")
    if check:
        pr = {k: "undefined" if check[k] is None else f"{check[k]:.2f}" for k in ("precision", "recall")}
        print(f"\nnon-locality criterion vs exact truth: precision {pr['precision']}, recall {pr['recall']}")
    for note in doc["notes"]:
        print(f"note: {note}")
    print(f"wrote {path}")
    return 0


def _cmd_merge(args) -> int:
    from cafe_bench.shards import merge_shards

    out = merge_shards(args.dir)
    print(f"merged: {out}/results.jsonl, provenance: {out}/run.json")
    return 0


def _cmd_report(args) -> int:
    from cafe_bench.report import write_report
    from cafe_bench.suites import load_suite

    if args.units < 0:
        raise CafeBenchError(f"--units must be 0 or a positive integer, got {args.units}")
    suite = load_suite(args.suite) if args.suite else None
    print(write_report(args.dir, args.out, suite=suite, n_units=args.units))
    return 0


def main(argv=None) -> int:
    """Entry point of ``cafe-bench``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {
        "run": _cmd_run,
        "leaderboard": _cmd_leaderboard,
        "paired": _cmd_paired,
        "compare": _cmd_compare,
        "baselines": _cmd_baselines,
        "plot": _cmd_plot,
        "validate-attributor": _cmd_validate,
        "methods": _cmd_methods,
        "sae": _cmd_sae,
        "suites": _cmd_suites,
        "featureset": featureset_command.main,
        "sanity": _cmd_sanity,
        "validity": _cmd_validity,
        "report": _cmd_report,
        "merge": _cmd_merge,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return handlers[args.command](args)
    except CafeBenchError as exc:
        print(f"cafe-bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"cafe-bench: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cafe-bench: interrupted; finished batches are stored, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
