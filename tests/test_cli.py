import subprocess
import sys

import pytest

from cafe_bench.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--methods", "activation,nope"], "unknown method 'nope'"),
        (["run", "--layers", "2"], "no SAE at layer 2; valid: 1, 3, 5"),
        (
            ["run", "--protocols", "insert"],
            "unknown protocol 'insert'; valid: insertion, deletion, deletion_lerf, insertion_lerf",
        ),
        (["run", "--baseline", "gray"], "unknown baseline 'gray'; valid: blur, mean, road, zero"),
        (["run", "--suite", "huge"], "unknown suite 'huge'; valid: photos, relations, tiny"),
        (["run", "--device", "tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda"),
        (["run", "--steps", "0"], "steps must be an integer in 1..64 (the number of patches), got 0"),
        (["run", "--steps", "65"], "steps must be an integer in 1..64 (the number of patches), got 65"),
        (["run", "--steps", "1000000"], "steps must be an integer in 1..64 (the number of patches), got 1000000"),
        (
            ["run", "--method-args", "integrated_gradients:n_step=8"],
            "unknown parameter 'n_step' for method 'integrated_gradients'; valid: n_steps (default 32)",
        ),
        (
            ["run", "--methods", "activation", "--method-args", "smoothgrad:stdevs=0.2"],
            "--method-args names 'smoothgrad', which is not run; methods run: activation",
        ),
        (["run", "--method-args", "occlusion:batch_size=0"], "batch_size must be a positive integer, got 0"),
        (["run", "--method-args", "occlusion"], "--method-args: expected METHOD:KEY=VALUE[,KEY=VALUE]"),
        (
            ["run", "--method-args", "integrated_gradients:method=bogus"],
            "method 'integrated_gradients' refuses {'method': 'bogus'}: method must be one of captum's",
        ),
        (
            ["run", "--method-args", "kernel_shap:l1_reg=lots"],
            "l1_reg must be false, true, a number >= 0, 'auto', 'aic', 'bic' or 'num_features(N)'; got 'lots'",
        ),
        (
            ["run", "--method-args", "occlusion:batch_size=8;occlusion:batch_size=9"],
            "--method-args names 'occlusion' twice",
        ),
        (["run", "--method-args", "occlusion:batch_size"], "--method-args: expected KEY=VALUE for 'occlusion'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_run_prints_the_leaderboard_and_writes_the_store(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--methods", "activation,random", "--layers", "3", "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "insertion AUC (95% CI)" in table and "deletion AUC (95% CI)" in table
    assert table.count("| activation") == 1 and table.count("| random") == 1
    assert (out / "results.jsonl").exists() and (out / "run.json").exists()
    assert main(["run", "--methods", "activation,random", "--layers", "3", "--out", str(out), "--no-progress"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_methods_lists_the_registry(capsys):
    from cafe_bench.attributors.registry import list_attributors

    assert main(["methods"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == list_attributors()
    assert {"activation", "random", "gradient", "grad_x_input"} <= set(list_attributors())


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "cafe_bench.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--resume" in out.stdout and "--baseline" in out.stdout


def test_tampered_suite_exits_2_and_writes_nothing(suite, tmp_path, capsys):
    import shutil

    dst = tmp_path / "suite"
    shutil.copytree(suite.path, dst)
    sae = dst / "sae_layer3.safetensors"
    data = bytearray(sae.read_bytes())
    data[100] ^= 0x01
    sae.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["run", "--suite", str(dst), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sae_layer3.safetensors: checksum mismatch" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "manifest, message",
    [
        ({"name": "x"}, "suite manifest lacks field 'version'"),
        ("not json", "suite.json: not valid JSON"),
        ("drop:files", "suite manifest lacks field 'files'"),
        ("drop:protocol.steps", "suite manifest lacks field 'protocol.steps'"),
        ("type:saes", "field 'saes' has the wrong type (list)"),
        ("empty:scenes", "suite manifest lacks field 'scenes.seed'"),
        ("sae:d_sae", "suite manifest lacks field 'saes.3.d_sae'"),
        ("sae:kind", "field 'saes.3.kind' is 'relu'; valid: matryoshka_batchtopk"),
        ("model:library", "field 'model.library' is 'jax'; valid: open_clip, timm"),
        ("model:vision_config", "suite manifest lacks field 'model.vision_config'"),
        ("files:features.json", "features.json is used by the suite but not listed (with its SHA-256) in 'files'"),
    ],
)
def test_malformed_suite_manifest_exits_2_naming_the_field(manifest, message, suite, tmp_path, capsys):
    import json
    import shutil

    dst = tmp_path / "suite"
    shutil.copytree(suite.path, dst)
    doc = json.loads((dst / "suite.json").read_text())
    if isinstance(manifest, dict):
        text = json.dumps(manifest)
    elif manifest == "not json":
        text = "{"
    else:
        action, name = manifest.split(":")
        if action == "drop" and "." in name:
            del doc["protocol"]["steps"]
        elif action == "drop":
            del doc[name]
        elif action == "empty":
            doc[name] = {}
        elif action == "sae" and name == "kind":
            doc["saes"]["3"]["kind"] = "relu"
        elif action == "sae":
            del doc["saes"]["3"][name]
        elif action == "model" and name == "library":
            doc["model"]["library"] = "jax"
        elif action == "model":
            del doc["model"][name]
        elif action == "files":
            del doc["files"][name]
        else:
            doc[name] = []
        text = json.dumps(doc)
    (dst / "suite.json").write_text(text)
    out = tmp_path / "out"
    assert main(["run", "--suite", str(dst), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["run", "--steps", "many"], ["run", "--layers", "one"], ["frobnicate"]])
def test_argument_errors_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_help_of_every_command_loads_no_torch():
    code = """
import argparse, contextlib, io, sys
from cafe_bench import cli

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))

helps = [[]] + [list(c) for c in commands(cli.build_parser())]
for args in helps:
    sys.argv = ["cafe-bench", *args, "--help"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main()
print(len(helps), [m for m in ("torch", "pandas", "open_clip") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) > 15 and out[1].strip() == "[]", out
