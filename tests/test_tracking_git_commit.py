"""The ``git_commit`` run tag says ``-dirty`` only when tracked code differs from the commit: not when ``dvc repro``
rewrote ``dvc.lock`` (what used to tag every fresh-clone run dirty), and always when code did change. A real
temporary git repository with a real DVC pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.tracking import changed_code, git_commit, is_pipeline_bookkeeping

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout


def _dvc(args: list[str], cwd: Path) -> str:
    return _run([str(Path(sys.executable).parent / "dvc"), *args], cwd)


@pytest.fixture
def pipeline_repo(tmp_path) -> Path:
    """A committed repository laid out like ours: code under src/, params.yaml, a DVC stage whose input lives in a
    git-ignored data/ folder (DVC-managed), and the dvc.lock of a first ``dvc repro``."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "src/train.py").write_text("print('train')\n")
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / "data/corpus.txt").write_text("first corpus\n")
    (repo / ".gitignore").write_text("/data\n")
    _run(["git", "init", "-q"], repo)
    _dvc(["init", "-q"], repo)
    _dvc(["config", "core.analytics", "false"], repo)
    _dvc(["stage", "add", "-q", "-n", "count", "-d", "data/corpus.txt", "-d", "src/train.py", "-o", "counts.txt",
          "wc -c data/corpus.txt > counts.txt"], repo)
    _dvc(["repro", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run([*GIT, "commit", "-qm", "pipeline"], repo)
    assert changed_code(repo) == [] and not git_commit(repo).endswith("-dirty")
    return repo


def test_fault_dvc_repro_rewriting_dvc_lock_is_not_dirty(pipeline_repo):
    repo = pipeline_repo
    head = _run(["git", "rev-parse", "HEAD"], repo).strip()
    (repo / "data/corpus.txt").write_text("a new version of the corpus\n")  # new data: DVC reruns the stage
    _dvc(["repro", "-q"], repo)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], repo)
    assert "dvc.lock" in status, f"the premise: dvc repro rewrote the tracked dvc.lock ({status!r})"
    assert git_commit(repo) == head


def test_fault_changed_code_is_still_dirty(pipeline_repo):
    repo = pipeline_repo
    head = _run(["git", "rev-parse", "HEAD"], repo).strip()
    (repo / "dvc.lock").write_text((repo / "dvc.lock").read_text() + "\n")  # bookkeeping alone: clean
    assert git_commit(repo) == head

    (repo / "params.yaml").write_text("lr: 0.2\n")  # unstaged
    assert git_commit(repo) == f"{head}-dirty" and changed_code(repo) == ["params.yaml"]
    _run(["git", "checkout", "--", "params.yaml"], repo)

    (repo / "src/train.py").write_text("print('changed')\n")
    _run(["git", "add", "src/train.py"], repo)  # staged, not committed
    assert changed_code(repo) == ["src/train.py"]
    _run(["git", "reset", "-q", "--hard"], repo)

    _run(["git", "mv", "src/train.py", "src/fit.py"], repo)  # a rename names both files
    assert sorted(changed_code(repo)) == ["src/fit.py", "src/train.py"]
    _run(["git", "reset", "-q", "--hard"], repo)

    os.remove(repo / "src/train.py")  # a deleted file
    assert git_commit(repo) == f"{head}-dirty"
    _run(["git", "checkout", "--", "src/train.py"], repo)

    (repo / "src/new_module.py").write_text("x = 1\n")  # untracked: not part of the commit's code either way
    assert git_commit(repo) == head


def test_fault_outside_git_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


@pytest.mark.parametrize(("path", "bookkeeping"), [
    ("dvc.lock", True), ("sub/dvc.lock", True), ("data.dvc", True), ("models/.gitignore", True),
    ("dvc.yaml", False), ("params.yaml", False), ("src/selfsup/tracking.py", False), ("presets/tiny.yaml", False),
    ("src/dvc.lock.py", False),
])
def test_fault_what_counts_as_pipeline_bookkeeping(path, bookkeeping):
    assert is_pipeline_bookkeeping(path) is bookkeeping
