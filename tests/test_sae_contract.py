"""The SAE contract and the format registry: every SAE encodes, decodes and gives one feature with gradient;
unknown formats, paths and widths are one-line errors."""

import pytest
import torch

from cafe_bench.errors import UnknownNameError
from cafe_bench.sae import SAE, MatryoshkaBatchTopKSAE, SAEFormatError, load_sae
from cafe_bench.sae.loading import check_width


def test_the_builtin_sae_is_an_sae_and_its_feature_path_matches_encode(suite):
    sae = suite.saes[3]
    assert isinstance(sae, SAE) and isinstance(sae, MatryoshkaBatchTopKSAE)
    assert sae.describe()["format"] == "cafe_bench" and sae.describe()["d_sae"] == 512
    x = torch.randn(40, sae.d_in) * 3
    feats = torch.randint(0, sae.d_sae, (40,))
    fast = sae.encode_feature(x, feats)
    column = sae.encode(x)[torch.arange(40), feats]
    torch.testing.assert_close(fast, column, rtol=1e-5, atol=1e-6)
    generic = SAE.encode_feature(sae, x, feats)  # the base class's default path
    torch.testing.assert_close(generic, column)


def test_the_default_feature_path_has_a_gradient():
    class Linear(SAE):
        format = "test"

        def __init__(self):
            super().__init__()
            self.d_in, self.d_sae = 3, 5
            self.w = torch.nn.Parameter(torch.arange(15.0).view(3, 5))

        def encode(self, x):
            return torch.relu(x @ self.w)

        def decode(self, z):
            return z @ self.w.T

    sae = Linear()
    x = torch.ones(2, 3, requires_grad=True)
    z = sae.encode_feature(x, torch.tensor([1, 4]))
    assert z.tolist() == [1 + 6 + 11, 4 + 9 + 14]
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert grad.tolist() == [[1.0, 6.0, 11.0], [4.0, 9.0, 14.0]]


def test_unknown_formats_paths_and_layouts_are_one_line_errors(tmp_path):
    with pytest.raises(SAEFormatError, match="no such SAE file or directory"):
        load_sae(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(SAEFormatError, match="not a known SAE layout; valid formats: .*pass --sae-format"):
        load_sae(tmp_path / "weights.bin")
    with pytest.raises(UnknownNameError, match="unknown SAE format 'sae_lens'; valid: "):
        load_sae(tmp_path / "weights.bin", format="sae_lens")


def test_a_width_mismatch_names_the_file_and_both_sizes(suite):
    check_width(suite.saes[1], 64, "sae_layer1.safetensors")
    with pytest.raises(SAEFormatError) as info:
        check_width(suite.saes[1], 1024, "/x/sae_layer1.safetensors", layer=1)
    message = str(info.value)
    assert "/x/sae_layer1.safetensors" in message and "d_in 64" in message and "width 1024 at block 1" in message


def test_the_sae_command_reports_mistakes_in_one_line(tmp_path, capsys):
    from cafe_bench.cli import main

    assert main(["sae", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such SAE file or directory" in err
    assert main(["sae", str(tmp_path), "--sae-format", "nope"]) == 2
    assert "unknown SAE format 'nope'" in capsys.readouterr().err


def test_each_published_layout_is_sniffed_as_its_own_format_only(tmp_path):
    import json

    from cafe_bench.sae.loading import _FORMATS, list_sae_formats

    assert list_sae_formats() == ["dictionary_learning", "saelens", "saev", "vit_prisma"]
    layouts = {
        "saelens": {"cfg.json": json.dumps({"d_in": 4, "d_sae": 8}), "sae_weights.safetensors": b""},
        "dictionary_learning": {"config.json": json.dumps({"trainer": {"dict_class": "BatchTopKSAE"}}), "ae.pt": b""},
        "saev": {"sae.pt": json.dumps({"schema": 5}).encode() + b"\n"},
        "vit_prisma": {"config.json": json.dumps({"d_in": 4, "hook_point": "x"}), "n_images_100.pt": b""},
    }
    for name, files in layouts.items():
        folder = tmp_path / name
        folder.mkdir()
        for file_name, content in files.items():
            (folder / file_name).write_bytes(content.encode() if isinstance(content, str) else content)
        target = folder / "sae.pt" if name == "saev" else folder
        matched = [fmt for fmt, spec in _FORMATS.items() if spec.sniff(target)]
        assert matched == [name], (name, matched)
