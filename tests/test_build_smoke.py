import subprocess
import sys
from pathlib import Path

import pytest

import cafe_bench
from cafe_bench.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]


def test_build_script_smoke_run_makes_a_loadable_suite(tmp_path):
    out = tmp_path / "suite"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_tiny_suite.py"), "--out", str(out), "--smoke", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    suite = load_suite(out)
    assert len(suite.units()) > 0
    report = (out / "training_report.json").read_text()
    assert "mean_accuracy" in report and "fvu" in report
    with pytest.warns(UserWarning, match=r"FVU \d\.\d+ > 0\.5") as caught:  # seconds of training: implausible
        df = cafe_bench.run(suite, methods=["activation"], protocols=["insertion"], progress=False)
    assert sorted(str(w.message).split()[4] for w in caught if "FVU" in str(w.message)) == ["1", "3", "5"]
    assert (df["status"] == "ok").all()


def test_relations_build_script_smoke_run_makes_a_suite_with_a_checked_reference(tmp_path):
    import json

    from cafe_bench.errors import ChecksumError

    out = tmp_path / "relations"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_relations_suite.py"),
            "--out",
            str(out),
            "--smoke",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    suite = load_suite(out)
    units = suite.units()
    ref = suite.reference
    assert [(u["layer"], u["feature"], u["image_id"], u["token"]) for u in ref["units"]] == [u.key() for u in units]
    entry = ref["units"][0]
    assert len(entry["occlusion"]) == suite.backbone.n_patches
    assert len(entry["shapley"]) == entry["n_objects"] + 1
    for protocol in ("insertion", "deletion"):
        assert sorted(entry["oracle"][protocol]["order"]) == list(range(suite.backbone.n_patches))
    stats = suite.feature_set["layers"]
    assert set(stats) == {"1", "3"} and all(0.0 <= s["candidate_nonlocal_fraction"] <= 1.0 for s in stats.values())
    # an edited reference is refused, even with a matching manifest entry
    doc = json.loads((out / "reference.json").read_text())
    doc["units"][0]["clean"] += 1.0
    (out / "reference.json").write_text(json.dumps(doc))
    with pytest.raises(ChecksumError):
        load_suite(out)
    manifest = json.loads((out / "suite.json").read_text())
    from cafe_bench.cache import file_sha256

    manifest["files"]["reference.json"] = file_sha256(out / "reference.json")
    (out / "suite.json").write_text(json.dumps(manifest))
    with pytest.raises(ChecksumError, match="reference does not match its sha256"):
        _ = load_suite(out).reference
