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
