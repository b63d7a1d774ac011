"""The streaming feature-set builder: units over a real open_clip ViT-B-32 (random weights) and an image folder,
checked against the documented rule applied by hand to every code held in memory; exact ties; refusals; bounded
memory on a wide dictionary; the ``featureset build`` command."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cafe_bench.errors import CafeBenchError, ChecksumError
from cafe_bench.featuresets.builder import read_feature_set
from cafe_bench.featuresets.command import add_parser, main, parse_sae_spec
from cafe_bench.featuresets.stream import (
    FORMAT,
    FeatureSetError,
    SelectionRules,
    build_feature_set_stream,
    build_from_names,
    feature_set_sha256,
)
from cafe_bench.images import FolderSource, ImageSource
from cafe_bench.sae import load_sae
from cafe_bench.sae.formats.saelens import SAELensSAE
from cafe_bench.synthetic import PatchMeanBackbone

MODEL = "open_clip:ViT-B-32"
SMALL = {"force_image_size": 96}
"""ViT-B-32 at 96 pixels: a 3 x 3 patch grid, so a forward pass costs little."""


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFE_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def vit():
    from cafe_bench.models.factory import load_backbone

    return load_backbone(MODEL, "none", **SMALL)


def write_saelens(directory: Path, d_in: int = 768, d_sae: int = 256, layer: int = 6, seed: int = 0) -> Path:
    """A standard SAELens SAE (cfg.json + sae_weights.safetensors); biases spread the features' firing rates."""
    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True)
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": "standard",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": f"blocks.{layer}.hook_resid_post"},
    }
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.linspace(-4.0, 0.5, d_sae),
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    return directory


def write_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` small noisy PNGs, half of them in a class sub-folder (ids hold a ``/``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / (f"cls_b/img{i:02d}.png" if i % 2 else f"img{i:02d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        pixels[: size[0] // 2] //= 1 + i % 3  # some structure, so images differ in more than noise
        Image.fromarray(pixels).save(path)
    return folder


# -- the rule applied by hand to every code -------------------------------------------------------------------


def expected_units(codes_npm: np.ndarray, layer: int, rules: SelectionRules, ids: list) -> tuple[list[dict], dict]:
    """The module docstring's rule, step by step, on all codes (N, P, m) of one layer at once."""
    n_images, n_patches, n_features = codes_npm.shape
    peak = codes_npm.max(axis=1)  # (N, m)
    min_images = rules.min_images
    alive = [f for f in range(n_features) if int((peak[:, f] > 0).sum()) >= min_images]
    assert len(alive) >= rules.per_layer, "test setup: too few alive features"
    freq = {f: float((codes_npm[:, :, f] > 0).sum()) / (n_images * n_patches) for f in alive}
    lo, hi = np.log10(rules.min_frequency), np.log10(rules.max_frequency)
    dist = {f: max(0.0, lo - np.log10(freq[f]), np.log10(freq[f]) - hi) for f in alive}
    w = sorted(dist.values())[rules.per_layer - 1]
    eligible = [f for f in alive if dist[f] <= w]
    chosen = sorted(np.random.default_rng([rules.seed, layer]).choice(eligible, rules.per_layer, replace=False))
    units = []
    for f in chosen:
        best = sorted(range(n_images), key=lambda i: (-peak[i, f], i))[: rules.images_per_feature]
        for i in sorted(best):
            column = codes_npm[i, :, f].tolist()
            token = column.index(max(column))  # list.index: the first, i.e. lowest patch
            units.append({"layer": layer, "feature": int(f), "image_id": ids[i], "token": token})
    n_in_band = sum(d == 0 for d in dist.values())
    return units, {"n_alive": len(alive), "n_eligible": len(eligible), "widened": w > 0, "n_in_band": n_in_band}


@pytest.mark.parametrize("band", [(1e-4, 1e-4), (1e-4, 1.0)], ids=["degenerate band: widened", "wide band: as given"])
def test_stream_equals_all_codes_in_memory(vit, tmp_path, band):
    saes = {layer: load_sae(write_saelens(tmp_path / f"sae{layer}", layer=layer, seed=layer)) for layer in (3, 6)}
    source = FolderSource(write_images(tmp_path / "images", 7))
    lo, hi = band
    rules = SelectionRules(per_layer=4, images_per_feature=2, min_images=3, min_frequency=lo, max_frequency=hi)
    doc = build_feature_set_stream(vit, saes, source, rules, batch_size=3, progress=False)

    ids = source.ids()
    with torch.no_grad():
        residuals = vit.residuals(source.load(ids, vit.preprocess), [3, 6])
        units = []
        for layer in (3, 6):
            x = residuals[layer][:, vit.n_prefix_tokens :]  # (N, P, d)
            codes = saes[layer].encode(x.reshape(-1, x.shape[-1])).view(x.shape[0], x.shape[1], -1).numpy()
            layer_units, stats = expected_units(codes, layer, rules, ids)
            units += layer_units
            record = doc["layers"][str(layer)]
            for f in {u["feature"] for u in layer_units}:
                assert record["band"][0] <= (codes[:, :, f] > 0).mean() <= record["band"][1]
            assert record["n_alive"] == stats["n_alive"]
            assert record["n_eligible"] == stats["n_eligible"]
            assert record["n_in_band"] == stats["n_in_band"]
            assert record["band_widened"] == stats["widened"] == (band[1] < 1.0)
    assert doc["units"] == units
    assert doc["n_images"] == 7 and doc["n_patches"] == 9


# -- exact ties, on a backbone whose arithmetic is exact ------------------------------------------------------


class ArraySource(ImageSource):
    """Images made by ``make(i)`` for ids 0..n-1 (never stored together)."""

    kind = "arrays"

    def __init__(self, n: int, make):
        self.n, self.make = n, make

    def ids(self):
        return list(range(self.n))

    def _load_one(self, image_id, preprocess):
        return self.make(int(image_id))

    def sha256s(self, image_ids):
        return [hashlib.sha256(self.make(int(i)).tobytes()).hexdigest() for i in image_ids]


def channel_sae(d_sae: int = 2) -> SAELensSAE:
    """Feature c = relu(mean of channel c - 1/8): exact in float32 for pixel values in quarters."""
    w_enc = torch.zeros(4, d_sae)
    for c in range(d_sae):
        w_enc[c % 3, c] = 1.0
    tensors = {"W_enc": w_enc, "b_enc": torch.full((d_sae,), -0.125), "W_dec": w_enc.t(), "b_dec": torch.zeros(4)}
    return SAELensSAE("standard", tensors, apply_b_dec_to_input=False)


def tie_images(i: int) -> np.ndarray:
    """Image 0 and 2 equal (uniform red 0.5), image 3 red 0.5 in its last patch only; green: image 1 uniform 0.25,
    image 3 1.0 in patches 1 and 2 (a token tie)."""
    image = np.zeros((3, 8, 8), dtype=np.float32)
    if i in (0, 2):
        image[0] = 0.5
    if i == 1:
        image[1] = 0.25
    if i == 3:
        image[0, 4:, 4:] = 0.5
        image[1, :4, 4:] = 1.0
        image[1, 4:, :4] = 1.0
    return image


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_ties_go_to_the_earlier_image_and_the_lower_patch(batch_size):
    rules = SelectionRules(per_layer=2, images_per_feature=2, min_images=2, max_frequency=1.0)
    doc = build_feature_set_stream(
        PatchMeanBackbone(), {0: channel_sae()}, ArraySource(4, tie_images), rules, batch_size, progress=False
    )
    got = [(u["feature"], u["image_id"], u["token"]) for u in doc["units"]]
    # red peaks 0.375 on images 0, 2 and 3: the earlier two win; green: image 3 (patches 1, 2 tie -> 1) and image 1
    assert got == [(0, 0, 0), (0, 2, 0), (1, 1, 0), (1, 3, 1)]
    assert sorted(doc["images"]["hashes"]) == ["0", "1", "2", "3"]


def blocky_images(i: int) -> np.ndarray:
    """Each 4 x 4 patch of each channel one of 0, 1/4, ..., 1: many exactly equal peaks, across images and patches."""
    levels = np.random.default_rng(100 + i).integers(0, 5, (3, 2, 2)) / 4
    return np.kron(levels, np.ones((4, 4))).astype(np.float32)


@pytest.mark.parametrize("batch_size", [1, 3, 5, 11])
def test_many_ties_match_the_rule_applied_by_hand(batch_size):
    sae = channel_sae(12)
    sae.b_enc.data = torch.tensor([-0.125, -0.375, -0.625, -0.875]).repeat(3)
    source = ArraySource(11, blocky_images)
    rules = SelectionRules(per_layer=6, images_per_feature=3, seed=3, max_frequency=1.0)
    doc = build_feature_set_stream(PatchMeanBackbone(), {0: sae}, source, rules, batch_size, progress=False)
    patches = torch.from_numpy(np.stack([blocky_images(i) for i in range(11)]))
    means = patches.unfold(2, 4, 4).unfold(3, 4, 4).mean(dim=(-1, -2)).flatten(2).transpose(1, 2)  # (N, P, 3)
    codes = torch.relu(means[..., torch.arange(12) % 3] + sae.b_enc.detach()).numpy()  # (N, P, 12)
    units, _ = expected_units(codes, 0, rules, source.ids())
    assert doc["units"] == units


def test_too_few_alive_features_names_the_count():
    rules = SelectionRules(per_layer=3, images_per_feature=2, max_frequency=1.0)
    with pytest.raises(FeatureSetError, match=r"layer 0: only 2 features .* 3 needed.*--per-layer") as info:
        build_feature_set_stream(
            PatchMeanBackbone(), {0: channel_sae()}, ArraySource(4, tie_images), rules, progress=False
        )
    assert "\n" not in str(info.value)
    with pytest.raises(FeatureSetError, match="holds 4 images but a feature must peak > 0 on at least 5"):
        build_feature_set_stream(
            PatchMeanBackbone(), {0: channel_sae()}, ArraySource(4, tie_images), SelectionRules(min_images=5)
        )


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"per_layer": 0}, "per_layer must be a positive integer"),
        ({"images_per_feature": 3, "min_images": 2}, "min_images 2 is below images_per_feature 3"),
        ({"min_frequency": 0.1, "max_frequency": 0.01}, "0 < min <= max <= 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_rules_are_refused(fields, match):
    with pytest.raises(FeatureSetError, match=match):
        SelectionRules(**fields)


# -- over the real model, by name -----------------------------------------------------------------------------


def test_build_from_names_is_deterministic_and_checksummed(tmp_path):
    images = write_images(tmp_path / "images", 6)
    sae = write_saelens(tmp_path / "sae6")
    rules = SelectionRules(per_layer=3, images_per_feature=2)

    def build(out):
        torch.rand(7)  # the global generator moves between builds: random weights must not depend on it
        options = {"rules": rules, "batch_size": 4, "out": out, "progress": False, "model_kwargs": SMALL}
        return build_from_names(MODEL, "none", {6: sae}, images=images, **options)

    doc = build(tmp_path / "a.json")
    assert doc == build(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert doc["format"] == FORMAT and doc["rules"]["min_images"] == 2
    assert len(doc["units"]) == 3 * 2
    assert len({u["feature"] for u in doc["units"]}) == 3
    source_ids = FolderSource(images).ids()
    assert all(isinstance(u["image_id"], str) and u["image_id"] in source_ids for u in doc["units"])
    assert any("/" in i for i in source_ids)
    assert set(doc["images"]["hashes"]) == {u["image_id"] for u in doc["units"]}
    assert doc["provenance"]["saes"]["6"]["sha256"] and doc["provenance"]["saes"]["6"]["format"] == "saelens"
    assert doc["provenance"]["model"] == MODEL and doc["provenance"]["pretrained_sha256"] is None
    assert doc["sha256"] == feature_set_sha256(doc)
    assert read_feature_set(tmp_path / "a.json") == doc

    stored = json.loads((tmp_path / "a.json").read_text())
    stored["rules"]["seed"] = 1  # units untouched: only the whole-file checksum can tell
    (tmp_path / "edited.json").write_text(json.dumps(stored))
    with pytest.raises(ChecksumError, match="does not match its sha256"):
        read_feature_set(tmp_path / "edited.json")
    stored = json.loads((tmp_path / "a.json").read_text())
    stored["units"][0]["token"] += 1
    (tmp_path / "edited.json").write_text(json.dumps(stored))
    with pytest.raises(ChecksumError):
        read_feature_set(tmp_path / "edited.json")


def test_an_sae_of_another_block_is_warned_about(tmp_path):
    sae = write_saelens(tmp_path / "sae9", layer=9)
    images = write_images(tmp_path / "images", 3)
    rules = SelectionRules(per_layer=1, images_per_feature=1)
    with pytest.warns(UserWarning, match="trained after block 9, used here at block 6"):
        build_from_names(MODEL, "none", {6: sae}, images=images, rules=rules, progress=False, model_kwargs=SMALL)


def test_a_text_file_lists_the_images(tmp_path):
    images = write_images(tmp_path / "images", 4)
    (images / "list.txt").write_text("# two of them\ncls_b/img03.png\nimg00.png\n")
    rules = SelectionRules(per_layer=2, images_per_feature=1)
    options = {"rules": rules, "progress": False, "model_kwargs": SMALL}
    doc = build_from_names(MODEL, "none", {6: write_saelens(tmp_path / "sae6")}, images=images / "list.txt", **options)
    assert doc["n_images"] == 2 and doc["images"]["source"]["kind"] == "list"
    assert {u["image_id"] for u in doc["units"]} <= {"cls_b/img03.png", "img00.png"}


def test_old_feature_sets_without_sha256_still_load():
    tiny = Path(__file__).resolve().parent.parent / "cafe_bench" / "suites" / "tiny" / "features.json"
    doc = read_feature_set(tiny)
    assert "sha256" not in doc and doc["units"]


def test_wrong_width_names_the_file_and_both_sizes(tmp_path):
    sae = write_saelens(tmp_path / "sae512", d_in=512)
    images = write_images(tmp_path / "images", 2)
    with pytest.raises(CafeBenchError) as info:
        build_from_names(MODEL, "none", {6: sae}, images=images, progress=False, model_kwargs=SMALL)
    message = str(info.value)
    assert str(sae) in message and "512" in message and "768" in message and "\n" not in message


# -- memory does not grow with the number of images -----------------------------------------------------------

MEMORY_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
import numpy as np
from test_featureset_stream import ArraySource
from cafe_bench.synthetic import PatchMeanBackbone
from cafe_bench.featuresets.stream import SelectionRules, build_feature_set_stream
from cafe_bench.sae.formats.saelens import SAELensSAE

n_images, d_sae = {n_images}, {d_sae}
g = torch.Generator().manual_seed(0)
tensors = {{"W_enc": torch.randn(4, d_sae, generator=g), "b_enc": torch.linspace(-2.0, 0.0, d_sae),
            "W_dec": torch.randn(d_sae, 4, generator=g), "b_dec": torch.zeros(4)}}
sae = SAELensSAE("standard", tensors)
backbone = PatchMeanBackbone(patch_size=4, grid=(4, 4))
source = ArraySource(n_images, lambda i: np.random.default_rng(i).random((3, 16, 16), dtype=np.float32))
rules = SelectionRules(per_layer=8, images_per_feature=4)
def peak():  # VmHWM, not ru_maxrss: after exec, ru_maxrss keeps the forking parent's peak
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
try:  # give freed heap back first (else the build reuses it uncounted), then reset the peak to the current RSS
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = 1
except OSError:
    reset = 0
before = peak()
doc = build_feature_set_stream(backbone, {{0: sae}}, source, rules, batch_size=8, progress=False)
after = peak()
print(reset, before, after, len(doc["units"]), doc["n_patches"])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
def test_memory_is_bounded_whatever_the_number_of_images():
    n_images, d_sae, budget = 1024, 65536, 512 * 2**20  # measured growth 110-200 MiB; all codes 4 GiB
    script = MEMORY_SCRIPT.format(tests=str(Path(__file__).resolve().parent), n_images=n_images, d_sae=d_sae)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    reset, before, after, n_units, n_patches = (int(v) for v in run.stdout.split())
    if not reset:
        pytest.skip("the peak RSS cannot be reset here (/proc/self/clear_refs), so the build's peak is not measurable")
    all_codes = n_images * n_patches * d_sae * 4  # float32 codes of every patch token
    growth = after - before
    print(f"peak RSS growth {growth / 2**20:.0f} MiB; all codes would take {all_codes / 2**20:.0f} MiB")
    assert n_units == 8 * 4
    assert all_codes >= 6 * budget
    assert growth < budget


# -- the command ----------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cafe-bench")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_builds_and_prints_one_line(tmp_path, capsys):
    sae = write_saelens(tmp_path / "sae6")
    images = write_images(tmp_path / "images", 4)
    out = tmp_path / "fs.json"
    argv = ["featureset", "build", "--model", MODEL, "--pretrained", "none", "--sae", str(sae)]
    argv += ["--images", str(images), "--layers", "6", "--per-layer", "2", "--images-per-feature", "1"]
    argv += ["--seed", "0", "--out", str(out), "--batch-size", "2", "--no-progress"]
    assert main(_parse(argv)) == 0
    doc = read_feature_set(out)
    assert len(doc["units"]) == 2 and doc["rules"]["per_layer"] == 2
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and doc["sha256"] in printed[0] and str(out) in printed[0]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"--model": "open_clip:NoSuchNet"}, "unknown open_clip model 'NoSuchNet'"),
        ({"--images": "missing"}, "image folder not found"),
        ({"--layers": "6,9"}, "exactly one layer"),
    ],
)
def test_command_errors_are_one_line(tmp_path, change, match):
    sae = write_saelens(tmp_path / "sae6")
    images = write_images(tmp_path / "images", 2)
    options = {"--model": MODEL, "--sae": str(sae), "--images": str(images), "--layers": "6"}
    options["--out"] = str(tmp_path / "fs.json")
    options.update({k: str(tmp_path / v) if k == "--images" else v for k, v in change.items()})
    argv = ["featureset", "build", "--no-progress"] + [s for kv in options.items() for s in kv]
    with pytest.raises(CafeBenchError, match=match) as info:
        main(_parse(argv))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "fs.json").exists()


def test_sae_pairs():
    assert parse_sae_spec("6=a,9=b", None) == {6: "a", 9: "b"}
    assert parse_sae_spec("6=a,9=b", [9]) == {9: "b"}
    assert parse_sae_spec("dir/sae", [6]) == {6: "dir/sae"}
    with pytest.raises(FeatureSetError, match="no SAE for it"):
        parse_sae_spec("6=a", [7])
