"""The commit a record names: -dirty only when the code differs from it, not when results were written."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import cafe_bench.provenance


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    """A git checkout holding a copy of provenance.py, committed, with a results folder; returns its loaded module."""
    (tmp_path / "cafe_bench").mkdir()
    shutil.copy(cafe_bench.provenance.__file__, tmp_path / "cafe_bench" / "provenance.py")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "leaderboards").mkdir()
    (tmp_path / "leaderboards" / "board.json").write_text("{}")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")  # as the project's: loading the module writes bytecode
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    spec = importlib.util.spec_from_file_location("provenance_copy", tmp_path / "cafe_bench" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tmp_path, module


def test_results_written_beside_the_code_leave_the_commit_clean(checkout):
    repo, module = checkout
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert module.package_git_commit() == head
    (repo / "leaderboards" / "board.json").write_text('{"new": 1}')  # a regenerated board
    shutil.rmtree(repo / "leaderboards")  # or one removed before it is rewritten
    assert module.package_git_commit() == head


@pytest.mark.parametrize("change", ["edit", "new_module", "dependencies"])
def test_changed_code_marks_the_commit_dirty(checkout, change):
    repo, module = checkout
    if change == "edit":
        path = repo / "cafe_bench" / "provenance.py"
        path.write_text(path.read_text() + "\n# changed\n")
    elif change == "new_module":
        (repo / "cafe_bench" / "new.py").write_text("x = 1\n")
    else:
        (repo / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert module.package_git_commit().endswith("-dirty")


def test_update_leaderboards_refuses_uncommitted_code(checkout):
    repo, _ = checkout
    script = Path(__file__).resolve().parents[1] / "scripts" / "update_leaderboards.sh"
    (repo / "scripts").mkdir()
    shutil.copy(script, repo / "scripts" / script.name)
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "script")
    path = repo / "cafe_bench" / "provenance.py"
    path.write_text(path.read_text() + "\n# changed\n")
    out = subprocess.run(["bash", str(repo / "scripts" / script.name), "nosuite"], capture_output=True, text=True)
    assert out.returncode == 2 and "uncommitted changes in cafe_bench/" in out.stderr
    assert (repo / "leaderboards" / "board.json").exists()  # refused before touching any board
    _git(repo, "checkout", "--", "cafe_bench")  # committed code: the script goes on (and fails on the bogus suite)
    out = subprocess.run(["bash", str(repo / "scripts" / script.name), "nosuite"], capture_output=True, text=True)
    assert "uncommitted" not in out.stderr
