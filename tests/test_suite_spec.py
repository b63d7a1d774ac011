"""Suite specs as TOML: every field checked before work starts, one line naming the field, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from cafe_bench.cli import main
from cafe_bench.errors import CafeBenchError, SuiteError
from cafe_bench.suites import load_suite
from cafe_bench.suites.spec import read_spec

REPO = Path(__file__).resolve().parents[1]
CLIP_TOML = REPO / "suites" / "clip-vit-l14.toml"

VALID = """
name = "mini"
version = 1

[model]
name = "timm:vit_tiny_patch16_224"
pretrained = "none"
kwargs = {img_size = 32}

[images]
source = "folder"
path = "images"

[saes.1]
path = "sae1"

[feature_set]
path = "features.json"

[protocol]
baseline = "blur"
steps = 4
"""


def _spec(tmp_path, text=VALID) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_valid_spec_resolves_paths_relative_to_the_file(tmp_path):
    spec = read_spec(_spec(tmp_path))
    assert spec.name == "mini" and spec.version == "1"
    assert spec.saes[1].path == tmp_path / "sae1" and spec.saes[1].format is None
    assert spec.feature_set == tmp_path / "features.json"
    assert spec.images == {"source": "folder", "path": tmp_path / "images"}
    assert spec.model_kwargs == {"img_size": 32} and spec.pretrained == "none"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('name = "mini"\n', ""), "lacks field 'name'"),
        (lambda t: t.replace("steps = 4", 'steps = "4"'), "field 'protocol.steps' has the wrong type (str)"),
        (lambda t: t.replace("steps = 4", "steps = 0"), "'protocol.steps' must be a positive integer"),
        (lambda t: t.replace("steps = 4", "steps = 4\nstep = 8"), "unknown field 'protocol.step'; valid: baseline"),
        (lambda t: t.replace('path = "sae1"', 'path = "sae1"\nfromat = "saev"'), "unknown field 'saes.1.fromat'"),
        (lambda t: t.replace("[saes.1]", "[saes.first]"), "saes must map block numbers"),
        (lambda t: t.replace('source = "folder"\n', ""), "lacks field 'images.source'"),
        (lambda t: t.replace('pretrained = "none"', ""), "lacks field 'model.pretrained'"),
        (lambda t: t.replace('path = "images"', 'path = "${NO_SUCH_VAR_X}/val"'), "uses ${NO_SUCH_VAR_X}, which is"),
        (lambda t: t + "\n[[oops", "not valid TOML"),
    ],
)
def test_each_bad_field_is_one_line_naming_it(tmp_path, edit, message):
    with pytest.raises(SuiteError) as info:
        read_spec(_spec(tmp_path, edit(VALID)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_refuses_a_bad_spec_with_exit_2_before_any_work(tmp_path, capsys):
    path = _spec(tmp_path, VALID.replace("steps = 4", "steps = -1"))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "protocol.steps" in err
    assert not out.exists()


def test_missing_files_name_what_to_provide(tmp_path):
    text = VALID.replace("[saes.1]", '[saes.1]\nprovide = "put the block-1 SAE there"')
    with pytest.raises(SuiteError, match=r"layer-1 SAE .*sae1 not found; put the block-1 SAE there"):
        load_suite(_spec(tmp_path, text))
    (tmp_path / "sae1").mkdir()
    with pytest.raises(SuiteError, match=r"feature set .*features.json not found"):
        load_suite(_spec(tmp_path, text))


def test_unknown_model_library_and_image_source_are_named(tmp_path):
    (tmp_path / "sae1").mkdir()
    (tmp_path / "features.json").write_text("{}")
    (tmp_path / "images").mkdir()
    with pytest.raises(CafeBenchError, match="unknown model name 'torchvision:vit_b_16'; use LIBRARY:MODEL"):
        load_suite(_spec(tmp_path, VALID.replace("timm:vit_tiny_patch16_224", "torchvision:vit_b_16")))
    with pytest.raises(SuiteError, match="unknown image source 'glob'; valid: folder, list"):
        load_suite(_spec(tmp_path, VALID.replace('source = "folder"', 'source = "glob"')))
    with pytest.raises(SuiteError, match="images: .*no images"):
        load_suite(_spec(tmp_path))  # an empty folder


def test_clip_suite_without_data_says_what_to_set_and_provide(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CAFE_BENCH_DATA", raising=False)
    assert main(["run", str(CLIP_TOML), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "set CAFE_BENCH_DATA" in err
    monkeypatch.setenv("CAFE_BENCH_DATA", str(tmp_path))
    assert main(["run", "--suite", str(CLIP_TOML), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "model weights" in err and "open_clip_model.safetensors not found; download open_clip's" in err


def test_two_different_suites_are_refused(capsys):
    assert main(["run", "tiny", "--suite", "photos", "--no-progress"]) == 2
    assert "two suites given" in capsys.readouterr().err
