import subprocess
import sys
from pathlib import Path

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
    df = cafe_bench.run(suite, methods=["activation"], protocols=["insertion"], progress=False)
    assert (df["status"] == "ok").all()
