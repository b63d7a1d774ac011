"""The streaming feature-set builder: units of real SAEs over a real model and an image folder, in one pass.

The images are read once, in batches, in the source's id order; per layer only running statistics are kept
(firing counts and each feature's top images), so memory does not grow with the number of images.

The rule (deterministic; every parameter is recorded in the file as ``rules``). Per layer, over the N images of
the source and their P patch tokens (prefix tokens such as CLS are dropped), with ``z`` the SAE codes:

1. **Alive**: a feature is alive when its per-image peak ``max_p z[i, p, f]`` is > 0 on at least ``min_images``
   distinct images (default: ``images_per_feature``; never fewer).
2. **Band**: its firing frequency is the share of the N x P patch tokens where ``z > 0``; an alive feature is
   eligible when ``min_frequency <= frequency <= max_frequency``.
3. **Widening** (small pools): when fewer than ``per_layer`` alive features are eligible, the band is widened by
   one factor ``10**w`` on both sides, ``[min_frequency / 10**w, max_frequency * 10**w]``, just enough to let
   ``per_layer`` alive features in. With an alive feature's distance from the band
   ``d = max(log10(min_frequency / frequency), log10(frequency / max_frequency))`` (0 inside the band), ``w`` is
   the ``per_layer``-th smallest ``d`` and the eligible features are the alive ones with ``d <= w`` (ties included,
   so there may be more than ``per_layer``). Per layer the file records ``n_alive``, ``n_in_band`` (before
   widening), ``band`` (the band used), ``band_widened`` and ``n_eligible``. Fewer than ``per_layer`` alive
   features at all is a :class:`FeatureSetError` naming the count.
4. **Draw**: ``per_layer`` eligible features, drawn without replacement from the ascending list of eligible
   feature indices by ``numpy.random.default_rng([seed, layer]).choice``, then sorted.
5. **Images**: per drawn feature, the ``images_per_feature`` images of highest peak; ties go to the image earlier
   in the source's id order.
6. **Token**: in each of those images, the patch token where the feature peaks; ties go to the lowest patch index
   (row-major).

Units are listed by layer, then feature, then image position in the source, all ascending. The document's
``sha256`` is the SHA-256 of its canonical JSON (sorted keys, compact separators) without that key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_bench.featuresets.builder import STREAM_FORMAT, feature_set_sha256, units_sha256, write_feature_set
from cafe_bench.featuresets.rules import FeatureSetError, SelectionRules

__all__ = [
    "FORMAT",
    "FeatureSetError",
    "SelectionRules",
    "build_feature_set_stream",
    "build_from_names",
    "feature_set_sha256",
]

FORMAT = STREAM_FORMAT
"""The ``format`` field of a feature set written by this builder."""
CHUNK_CODES = 1 << 22
"""At most this many codes (float32: 16 MiB) are encoded at once; a single image is never split."""


class _LayerStats:
    """Running statistics of one layer's codes, O(d_sae * k) whatever the number of images."""

    def __init__(self, d_sae: int, k: int, device):
        self.k = k
        self.token_counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.image_counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.top_values = torch.full((d_sae, k), -math.inf, device=device)  # (m, k) best peaks, best first
        self.top_positions = torch.full((d_sae, k), -1, dtype=torch.int64, device=device)
        self.top_tokens = torch.full((d_sae, k), -1, dtype=torch.int64, device=device)

    def update(self, codes_cpm: torch.Tensor, first_position: int) -> None:
        """Fold in the codes (C, P, m) of the C images at positions ``first_position...``."""
        n_images, k = codes_cpm.shape[0], self.k
        # int32 partial sums (exact: a chunk holds far fewer than 2**31 tokens) are several times faster than int64
        self.token_counts += (codes_cpm > 0).flatten(0, 1).sum(dim=0, dtype=torch.int32)
        peaks_cm = codes_cpm.amax(dim=1).float()  # (C, m)
        self.image_counts += (peaks_cm > 0).sum(dim=0, dtype=torch.int32)
        # only features where a new image beats the k-th kept peak change (an equal peak loses: it is later)
        rows = (peaks_cm.amax(dim=0) > self.top_values[:, -1]).nonzero().squeeze(1)  # (r,)
        if rows.numel() == 0:
            return
        values = torch.cat([self.top_values[rows], peaks_cm[:, rows].t()], dim=1)  # (r, k + C)
        # stable: among equal peaks the kept (earlier) images stay ahead, and new ones keep their id order
        order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]  # (r, k)
        positions = torch.arange(first_position, first_position + n_images, device=codes_cpm.device)
        is_new = order >= k
        new_image = (order - k).clamp(min=0)
        kept = order.clamp(max=k - 1)
        tokens = self.top_tokens[rows].gather(1, kept)
        row, slot = is_new.nonzero().unbind(1)  # at most C per row: the gather below is no larger than the codes
        # the token of a new entry: first maximum of its image's column, i.e. the lowest patch index
        tokens[row, slot] = codes_cpm[new_image[row, slot], :, rows[row]].argmax(dim=-1)  # (n_new, P) -> (n_new,)
        self.top_values[rows] = values.gather(1, order)
        self.top_positions[rows] = torch.where(is_new, positions[new_image], self.top_positions[rows].gather(1, kept))
        self.top_tokens[rows] = tokens


def _select(layer: int, stats: _LayerStats, rules: SelectionRules, n_tokens: int) -> tuple[list[int], dict]:
    """The drawn features of one layer and the layer's record (steps 1 to 4 of the rule)."""
    image_counts = stats.image_counts.cpu().numpy()
    alive = np.flatnonzero(image_counts >= rules.min_images)
    if len(alive) < rules.per_layer:
        raise FeatureSetError(
            f"layer {layer}: only {len(alive)} features peak > 0 on at least {rules.min_images} images, "
            f"{rules.per_layer} needed; use more images, a lower --per-layer or --images-per-feature"
        )
    freq = stats.token_counts.cpu().numpy()[alive] / n_tokens  # > 0: an alive feature fired somewhere
    in_band = (freq >= rules.min_frequency) & (freq <= rules.max_frequency)
    log_freq, lo, hi = np.log10(freq), np.log10(rules.min_frequency), np.log10(rules.max_frequency)
    distance = np.where(in_band, 0.0, np.maximum(lo - log_freq, log_freq - hi))  # log10 distance from the band
    widen = float(np.sort(distance)[rules.per_layer - 1])  # 0 when the band holds enough features
    eligible = alive[distance <= widen]
    band = [rules.min_frequency, rules.max_frequency]
    if widen > 0:  # 10**w is rounded: stretch the edges to the eligible frequencies, so the band holds them all
        used = freq[distance <= widen]
        band = [min(band[0] / 10**widen, float(used.min())), max(band[1] * 10**widen, float(used.max()))]
    chosen = np.random.default_rng([rules.seed, layer]).choice(eligible, size=rules.per_layer, replace=False)
    record = {
        "n_features": len(image_counts),
        "n_alive": len(alive),
        "n_in_band": int(in_band.sum()),
        "band": band,
        "band_widened": widen > 0,
        "n_eligible": len(eligible),
        "n_tokens": n_tokens,
    }
    return sorted(int(f) for f in chosen), record


def _check_inputs(backbone, saes: Mapping, rules: SelectionRules, n_images: int, batch_size: int) -> None:
    from cafe_bench.sae.loading import check_width

    if not saes:
        raise FeatureSetError("no SAE given: pass at least one layer's SAE")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FeatureSetError(f"batch size must be a positive integer, got {batch_size!r}")
    for layer, sae in saes.items():
        if not 0 <= int(layer) < backbone.n_blocks:
            raise FeatureSetError(f"layer {layer} out of range; the model has blocks 0..{backbone.n_blocks - 1}")
        check_width(sae, backbone.width, f"SAE of layer {layer}", layer)
    if n_images < rules.min_images:
        raise FeatureSetError(
            f"the image source holds {n_images} images but a feature must peak > 0 on at least {rules.min_images}; "
            "add images or lower --images-per-feature"
        )


@torch.no_grad()
def build_feature_set_stream(
    backbone,
    saes: Mapping[int, object],
    source,
    rules: SelectionRules | None = None,
    batch_size: int = 16,
    progress: bool = True,
    provenance: dict | None = None,
) -> dict:
    """Scan every image of ``source`` once and choose units by ``rules``; returns the feature-set document.

    Args:
        backbone: a :class:`cafe_bench.models.base.Backbone` (its device is used for everything).
        saes: ``{layer: SAE}`` with 0-based block indices; each SAE's ``d_in`` must be the model's width.
        source: an :class:`cafe_bench.images.ImageSource`; image ids in units are its ids.
        rules: the selection rules (default ``SelectionRules()``).
        batch_size: images per forward pass (default 16).
        progress: show a progress bar (default True).
        provenance: recorded as is (model, weights and SAE files with their hashes), default ``{}``.

    Returns:
        ``{"format", "rules", "n_images", "n_patches", "layers", "units", "units_sha256", "images", "provenance",
        "sha256"}``. Memory, whatever the source's size: one batch's residuals, the codes of at most ``CHUNK_CODES``
        tokens x features (or of one image, if larger) at a time, and O(d_sae * images_per_feature) per layer.

    >>> doc = build_feature_set_stream(backbone, {6: sae}, FolderSource("val"), SelectionRules(per_layer=4))
    """
    rules = rules if rules is not None else SelectionRules()
    ids = source.ids()
    layers = sorted(int(layer) for layer in saes)
    _check_inputs(backbone, saes, rules, len(ids), batch_size)
    device = next((t.device for t in (*backbone.parameters(), *backbone.buffers())), torch.device("cpu"))
    stats: dict[int, _LayerStats] = {}
    n_patches = 0
    n_batches = math.ceil(len(ids) / batch_size)
    for start in tqdm(range(0, len(ids), batch_size), total=n_batches, desc="scan", disable=not progress, leave=False):
        images = source.load(ids[start : start + batch_size], backbone.preprocess).to(device)
        residuals = backbone.residuals(images, layers)
        for layer in layers:
            x_bpd = residuals[layer][:, backbone.n_prefix_tokens :]  # (B, P, d)
            n_b, n_patches, d = x_bpd.shape
            sae = saes[layer]
            if layer not in stats:
                stats[layer] = _LayerStats(int(sae.d_sae), rules.images_per_feature, device)
            per_chunk = max(1, CHUNK_CODES // (n_patches * int(sae.d_sae)))
            for c in range(0, n_b, per_chunk):
                x = x_bpd[c : c + per_chunk]
                codes = sae.encode(x.reshape(-1, d)).reshape(len(x), n_patches, -1)  # (C, P, m)
                stats[layer].update(codes, start + c)
    units, records, used = [], {}, set()
    n_tokens = len(ids) * n_patches
    for layer in layers:
        features, records[str(layer)] = _select(layer, stats[layer], rules, n_tokens)
        positions = stats[layer].top_positions.cpu().numpy()
        tokens = stats[layer].top_tokens.cpu().numpy()
        for feature in features:
            for pos, token in sorted(zip(positions[feature].tolist(), tokens[feature].tolist(), strict=True)):
                units.append({"layer": layer, "feature": feature, "image_id": ids[pos], "token": int(token)})
                used.add(pos)
    doc = {
        "format": FORMAT,
        "rules": asdict(rules),
        "n_images": len(ids),
        "n_patches": n_patches,
        "layers": records,
        "units": units,
        "units_sha256": units_sha256(units),
        "images": {"source": source.describe(), "hashes": source.hashes([ids[p] for p in sorted(used)])},
        "provenance": dict(provenance or {}),
    }
    doc["sha256"] = feature_set_sha256(doc)
    return doc


def feature_set_provenance(model: str, pretrained, saes: Mapping) -> dict:
    """What a feature set records of what it was built on: the model name, its weights (``pretrained`` and the
    SHA-256 of the weights file, None for random weights) and each SAE (``{layer: (path, SAE)}``: path, SHA-256 of
    its files, ``describe()``). A suite refuses a feature set whose hashes differ from its own."""
    from cafe_bench import __version__
    from cafe_bench.cache import path_sha256
    from cafe_bench.models.factory import pretrained_file

    weights = pretrained_file(model, pretrained)
    return {
        "builder": f"cafe_bench {__version__}",
        "model": model,
        "pretrained": str(pretrained),
        "pretrained_sha256": None if weights is None else path_sha256(weights),
        "saes": {
            str(layer): {"path": str(path), "sha256": path_sha256(path), **sae.describe()}
            for layer, (path, sae) in sorted(saes.items())
        },
    }


def _image_source(images):
    from cafe_bench.images import FolderSource, ImageSource, ListSource

    if isinstance(images, ImageSource):
        return images
    path = Path(images).expanduser()
    return ListSource(path) if path.is_file() else FolderSource(path)


def build_from_names(
    model: str,
    pretrained: str | Path | None,
    saes: Mapping[int, str | Path],
    sae_format: str | None = None,
    images: str | Path | None = None,
    rules: SelectionRules | None = None,
    batch_size: int = 16,
    out: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    model_kwargs: dict | None = None,
) -> dict:
    """Load the model and SAEs by name, scan ``images`` and write the feature set to ``out`` (atomic).

    Args:
        model: ``open_clip:ARCH`` or ``timm:MODEL`` (see :func:`cafe_bench.models.factory.load_backbone`).
        pretrained: ``"none"`` (random weights, drawn with a fixed seed) or a local checkpoint file.
        saes: ``{layer: path}`` of each layer's SAE file or directory (0-based block index).
        sae_format: the SAE file format (default: sniffed from the files).
        images: an image folder (every image under it, sorted by relative path), a text file listing images, or an
            :class:`cafe_bench.images.ImageSource` (required).
        rules: the selection rules (default ``SelectionRules()``).
        batch_size: images per forward pass (default 16).
        out: where to write the feature set (default: nowhere, only returned).
        progress: show a progress bar (default True).
        device: ``cpu`` (default), ``cuda`` or ``auto``.
        model_kwargs: passed to the library's model factory and recorded (e.g. ``{"force_image_size": 64}``).

    Returns:
        The feature-set document (also written to ``out``).

    >>> build_from_names("open_clip:ViT-B-32", "vitb32.safetensors", {6: "sae6"}, images="val", out="fs.json")
    """
    from cafe_bench.models.factory import load_backbone
    from cafe_bench.runner import resolve_device
    from cafe_bench.sae import load_sae
    from cafe_bench.sae.loading import check_sae_at_block

    if not saes:
        raise FeatureSetError("no SAE given: pass {layer: path} for at least one layer")
    if images is None:
        raise FeatureSetError("no images given: pass an image folder or a text file listing images")
    if out is not None and not Path(out).expanduser().parent.is_dir():
        raise FeatureSetError(f"{out}: its folder does not exist; create it first")
    source = _image_source(images)
    paths = {int(layer): Path(path).expanduser() for layer, path in saes.items()}
    loaded = {layer: load_sae(path, format=sae_format) for layer, path in sorted(paths.items())}
    device = resolve_device(device)
    backbone = load_backbone(model, pretrained, device=device, **(model_kwargs or {}))
    for layer, sae in loaded.items():
        if not 0 <= layer < backbone.n_blocks:
            raise FeatureSetError(f"layer {layer} out of range; {model} has blocks 0..{backbone.n_blocks - 1}")
        check_sae_at_block(sae, backbone.width, paths[layer], layer)
        sae.to(device).eval()
    provenance = feature_set_provenance(model, pretrained, {layer: (paths[layer], loaded[layer]) for layer in loaded})
    provenance["model_kwargs"] = dict(model_kwargs or {})
    doc = build_feature_set_stream(backbone, loaded, source, rules, batch_size, progress, provenance)
    if out is not None:
        write_feature_set(Path(out).expanduser(), doc)
    return doc


def build_for_suite(
    suite_toml,
    rules: SelectionRules | None = None,
    batch_size: int = 16,
    out=None,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Build the feature set of a TOML suite from its own model, weights, kwargs, SAEs (each with its format) and
    image source, and write it to ``out`` (default: the suite's ``feature_set.path``)."""
    from cafe_bench.images import make_image_source
    from cafe_bench.suites.spec import read_spec

    spec = read_spec(suite_toml)
    formats = {sae.format for sae in spec.saes.values()}
    if len(formats) > 1:
        raise FeatureSetError(f"{spec.source}: SAEs of several formats ({formats}); build per layer with --sae")
    source = make_image_source(spec.images["source"], **{k: v for k, v in spec.images.items() if k != "source"})
    return build_from_names(
        spec.model, spec.pretrained, {layer: sae.path for layer, sae in spec.saes.items()}, sae_format=formats.pop(),
        images=source, rules=rules, batch_size=batch_size, out=out if out is not None else spec.feature_set,
        progress=progress, device=device, model_kwargs=spec.model_kwargs,
    )  # fmt: skip
