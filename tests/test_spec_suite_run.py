"""TOML suites end to end: a timm ViT with random weights, SAELens SAEs written here, an image folder, a feature
set from `featureset build`; runs, lazy SAE loading, refusals of mismatched files, and the CLIP suite's smoke run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cafe_bench.cli import main
from cafe_bench.errors import CafeBenchError, ChecksumError
from cafe_bench.featuresets.stream import SelectionRules, build_from_names
from cafe_bench.models import load_backbone
from cafe_bench.runner import run
from cafe_bench.sae.formats.saelens import save_saelens
from cafe_bench.suites import load_suite
from cafe_bench.suites.spec import read_spec

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:the SAE at layer:UserWarning")  # random SAEs reconstruct nothing
MODEL, WIDTH, KWARGS = "timm:vit_tiny_patch16_224", 192, {"img_size": 64}
RULES = SelectionRules(per_layer=2, images_per_feature=1, min_frequency=1e-6, max_frequency=1.0)


def write_sae(directory: Path, d_in: int, d_sae: int = 24, seed: int = 0) -> Path:
    """A standard SAELens SAE with random weights whose features fire on about half of the tokens."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.zeros(d_in),
    }
    return save_saelens(directory, "standard", tensors)


def write_images(directory: Path, n: int, size: int = 80, seed: int = 0) -> Path:
    """``n`` PNGs of coloured rectangles on noise, in two class folders (ImageNet layout)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        pixels[y : y + size // 3, x : x + size // 3] = rng.integers(0, 255, 3)
        folder = directory / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return directory


SPEC = """
name = "mini"
version = "1"

[model]
name = "timm:vit_tiny_patch16_224"
pretrained = "none"
kwargs = {{img_size = 64}}

[images]
source = "folder"
path = "images"

[saes.1]
path = "sae1"

[saes.2]
path = "{sae2}"

[feature_set]
path = "features.json"

[protocol]
baseline = "blur"
steps = 4
"""


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """A suite folder: images, SAEs at blocks 1 and 2, a feature set built on block 1 only, suite.toml."""
    root = tmp_path_factory.mktemp("mini")
    write_images(root / "images", 6)
    write_sae(root / "sae1", WIDTH)
    write_sae(root / "sae2", WIDTH, seed=1)
    write_sae(root / "sae2_wide", 100, seed=2)  # the wrong width for this model
    build_from_names(
        MODEL, "none", {1: root / "sae1"}, images=root / "images", rules=RULES, out=root / "features.json",
        progress=False, model_kwargs=KWARGS,
    )  # fmt: skip
    (root / "suite.toml").write_text(SPEC.format(sae2="sae2"))
    return root


def test_runs_from_the_toml_with_string_image_ids(mini, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["run", str(mini / "suite.toml"), "--methods", "activation,gradient", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 2  # 2 units x 2 methods x 2 protocols
    assert all(isinstance(r["image_id"], str) and r["image_id"].startswith("class") for r in records)
    assert {r["status"] for r in records} <= {"ok", "skipped: dead feature (z_k of the clean image is 0)"}
    assert any(r["status"] == "ok" for r in records)
    config = json.loads((out / "run.json").read_text())["config"]
    assert set(config["suite_files"]) == {"model", "sae_1", "sae_2", "feature_set", "images"}
    # a resumed run finds everything done and writes nothing new
    assert main(["run", "--suite", str(mini / "suite.toml"), "--methods", "activation,gradient", "--out", str(out),
                 "--resume", "--no-progress"]) == 0  # fmt: skip
    assert len((out / "results.jsonl").read_text().splitlines()) == len(records)


def test_only_the_run_layers_sae_is_loaded(mini):
    suite = load_suite(mini / "suite.toml")
    assert suite.saes.loaded == []
    run(suite, methods=["activation"], protocols=["insertion"], layers=[1], progress=False)
    assert suite.saes.loaded == [1]


def test_wrong_width_sae_exits_2_naming_file_and_sizes(mini, tmp_path, capsys):
    spec = mini / "wide.toml"
    spec.write_text(SPEC.format(sae2="sae2_wide"))
    out = tmp_path / "run"
    code = main(["run", str(spec), "--layers", "2", "--methods", "activation", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "sae2_wide" in err and "d_in 100" in err and "width 192" in err
    assert not out.exists()


def _copy(mini: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(mini, root)
    return root


def test_feature_set_of_other_images_is_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    used = json.loads((root / "features.json").read_text())["units"][0]["image_id"]
    Image.fromarray(np.zeros((80, 88, 3), np.uint8)).save(root / "images" / used)
    with pytest.raises(ChecksumError, match=f"another image '{used}'"):
        load_suite(root / "suite.toml")


def test_feature_set_of_another_sae_or_model_is_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    write_sae(root / "sae1", WIDTH, seed=7)
    with pytest.raises(ChecksumError, match="another layer-1 SAE"):
        load_suite(root / "suite.toml")
    root = _copy(mini, tmp_path / "b")
    text = (root / "suite.toml").read_text()
    (root / "suite.toml").write_text(text.replace("img_size = 64", "img_size = 96"))
    with pytest.raises(ChecksumError, match="model kwargs"):
        load_suite(root / "suite.toml")
    (root / "suite.toml").write_text(text.replace("vit_tiny_patch16_224", "vit_small_patch16_224"))
    with pytest.raises(ChecksumError, match="built on model 'timm:vit_tiny_patch16_224'"):
        load_suite(root / "suite.toml")


def test_edited_feature_set_is_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    doc = json.loads((root / "features.json").read_text())
    doc["units"][0]["token"] = (doc["units"][0]["token"] + 1) % 16
    (root / "features.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError):
        load_suite(root / "suite.toml")


def test_clip_suite_smoke_with_random_weights(tmp_path, monkeypatch):
    """suites/clip-vit-l14.toml as shipped, with pretrained = "none" and SAEs and images written here."""
    data = tmp_path / "data"
    monkeypatch.setenv("CAFE_BENCH_DATA", str(data))
    for layer in (8, 16, 22):
        write_sae(data / "clip-vit-l14" / "saes" / f"layer{layer}", 1024, d_sae=16, seed=layer)
    write_images(data / "imagenet" / "val", 2, size=240)
    text = (REPO / "suites" / "clip-vit-l14.toml").read_text()
    shipped = 'pretrained = "${CAFE_BENCH_DATA}/clip-vit-l14/open_clip_model.safetensors"'
    assert shipped in text
    spec = tmp_path / "clip-vit-l14.toml"
    spec.write_text(text.replace(shipped, 'pretrained = "none"'))
    build_from_names(
        "open_clip:ViT-L-14-quickgelu", "none", {8: data / "clip-vit-l14" / "saes" / "layer8"},
        images=data / "imagenet" / "val", rules=SelectionRules(per_layer=1, images_per_feature=1, min_frequency=1e-6,
        max_frequency=1.0), out=data / "clip-vit-l14" / "features.json", progress=False,
    )  # fmt: skip
    out = tmp_path / "run"
    args = ["run", str(spec), "--layers", "8", "--methods", "activation,gradient", "--steps", "2", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["suite"] == "clip-vit-l14" for r in records)
    run_doc = json.loads((out / "run.json").read_text())
    assert run_doc["saes"]["8"]["d_in"] == 1024 and set(run_doc["saes"]) == {"8"}


def test_compare_refuses_another_feature_set_unless_the_ci_rule(mini, tmp_path, capsys):
    """Runs of a TOML suite carry its file hashes: the paired gate refuses a run on another feature set (exit 2),
    the ci rule, made for that case, compares it."""
    args = ["--methods", "activation,gradient", "--no-progress"]
    assert main(["run", str(mini / "suite.toml"), "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["leaderboard", str(tmp_path / "a"), "--save", str(tmp_path / "board")]) == 0
    root = _copy(mini, tmp_path)
    assert main(["featureset", "build", "--suite", str(root / "suite.toml"), "--per-layer", "2",
                 "--images-per-feature", "1", "--min-frequency", "1e-6", "--max-frequency", "1", "--seed", "5",
                 "--layers", "1", "--no-progress"]) == 2  # fmt: skip
    assert "--suite takes the model, SAEs and images from the suite file; drop --layers" in capsys.readouterr().err
    assert main(["featureset", "build", "--suite", str(root / "suite.toml"), "--per-layer", "2",
                 "--images-per-feature", "1", "--min-frequency", "1e-6", "--max-frequency", "1", "--seed", "5",
                 "--no-progress"]) == 0  # fmt: skip
    assert (
        json.loads((root / "features.json").read_text())["units"]
        != json.loads((mini / "features.json").read_text())["units"]
    )
    assert main(["run", str(root / "suite.toml"), "--out", str(tmp_path / "b"), *args]) == 0
    capsys.readouterr()
    board = str(tmp_path / "board.json")
    assert main(["compare", str(tmp_path / "b"), "--board", board]) == 2
    assert "feature set feature_set differs" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "b"), "--board", board, "--rule", "ci"]) in (0, 1)
    assert main(["compare", str(tmp_path / "a"), "--board", board]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "not valid JSON"), ("{}", "no list of units"), ('{"units": [{"layer": 1}]}', "no list of units")],
)
def test_a_file_that_is_no_feature_set_exits_2(mini, tmp_path, capsys, content, message):
    root = _copy(mini, tmp_path)
    (root / "features.json").write_text(content)
    assert main(["run", str(root / "suite.toml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_provenance_edits_and_a_dropped_checksum_are_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    doc = json.loads((root / "features.json").read_text())
    doc["provenance"]["pretrained_sha256"] = "0" * 64
    (root / "features.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError, match="does not match its sha256"):
        load_suite(root / "suite.toml")
    del doc["sha256"]
    (root / "features.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError, match="lacks its sha256"):
        load_suite(root / "suite.toml")


def test_model_kwargs_the_factory_refuses_exit_2(mini, tmp_path, capsys):
    root = _copy(mini, tmp_path)
    text = (root / "suite.toml").read_text().replace("kwargs = {img_size = 64}", "kwargs = {img_size = 64, foo = 1}")
    (root / "suite.toml").write_text(text)
    root_features = json.loads((root / "features.json").read_text())
    assert root_features["provenance"]["model_kwargs"] == {"img_size": 64}
    assert main(["run", str(root / "suite.toml"), "--no-progress"]) == 2  # the feature set pins the kwargs
    assert "model kwargs" in capsys.readouterr().err
    with pytest.raises(CafeBenchError, match=r"the model kwargs \{'foo': 1\} do not fit its factory"):
        load_backbone(MODEL, "none", foo=1)


def test_pretrained_file_is_found_beside_the_spec(tmp_path):
    (tmp_path / "weights").write_bytes(b"x")
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(sae2="sae2").replace('pretrained = "none"', 'pretrained = "weights"'))
    assert read_spec(spec).pretrained == tmp_path / "weights"
    spec.write_text(SPEC.format(sae2="sae2").replace('pretrained = "none"', 'pretrained = "openai"'))
    assert read_spec(spec).pretrained == "openai"  # a tag, refused later by the factory: nothing is downloaded
