import json
import shutil

import pytest
import torch

from cafe_bench.errors import CafeBenchError, ChecksumError, UnknownNameError
from cafe_bench.suites import load_suite
from cafe_bench.suites.manifest import file_sha256
from cafe_bench.target import Unit


def test_shipped_files_pass_their_hash_check(suite):
    import hashlib

    for name, digest in suite.hashes.items():
        assert hashlib.sha256((suite.path / name).read_bytes()).hexdigest() == digest
    assert len(suite.units()) == 96 and len(suite.units([3])) == 32


def _copy(suite, tmp_path):
    dst = tmp_path / "suite"
    shutil.copytree(suite.path, dst)
    return dst


def test_tampered_weights_fail_with_a_clear_error(suite, tmp_path):
    dst = _copy(suite, tmp_path)
    weights = dst / suite.manifest["model"]["weights"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch") as info:
        load_suite(dst)
    assert weights.name in str(info.value) and "\n" not in str(info.value)


def test_changed_feature_set_fails_even_with_a_matching_manifest(suite, tmp_path):
    dst = _copy(suite, tmp_path)
    fs = dst / "features.json"
    doc = json.loads(fs.read_text())
    doc["units"][0]["image_id"] += 1
    fs.write_text(json.dumps(doc))
    with pytest.raises(ChecksumError):
        load_suite(dst)  # the manifest hash catches it
    manifest = json.loads((dst / "suite.json").read_text())
    manifest["files"]["features.json"] = file_sha256(fs)
    (dst / "suite.json").write_text(json.dumps(manifest))
    with pytest.raises(ChecksumError, match="units do not match"):
        load_suite(dst)  # and so does the file's own units checksum


def test_unknown_suite_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: photos, relations, tiny"):
        load_suite("tinyy")


def test_out_of_range_units_are_refused(suite):
    unit = suite.units()[0]
    m = suite.n_features(unit.layer)
    with pytest.raises(CafeBenchError, match=f"valid: 0..{m - 1}"):
        suite.target([Unit(unit.layer, m, unit.image_id, unit.token)])
    with pytest.raises(CafeBenchError, match="valid: 0..63"):
        suite.target([Unit(unit.layer, unit.feature, unit.image_id, 64)])
    with pytest.raises(UnknownNameError, match="valid: 1, 3, 5"):
        suite.target([Unit(2, unit.feature, unit.image_id, unit.token)])


def test_feature_set_units_fire_at_their_token(suite):
    units = suite.units()
    t = suite.target(units)
    assert (t.clean > 0).all()
    fmap = t.feature_map(t.images).flatten(1)
    tokens = torch.tensor([u.token for u in units])
    assert torch.equal(fmap.argmax(1), tokens)


def test_target_batches_are_independent_rows(suite, mixed_units, target):
    for i, unit in enumerate(mixed_units):
        alone = suite.target([unit])
        assert torch.allclose(alone.clean, target.clean[i : i + 1], rtol=1e-5)
