"""The team's DVC remote, with the commands a user runs: push from one clone and pull into another through a local
remote, and the S3 (MinIO) remote set up with the commands docs/scaling.md gives, credentials kept out of git."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # dvc of this venv
pytestmark = pytest.mark.slow  # a dozen dvc and git commands: ~15-30 s
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"}


def sh(command: str, cwd: Path, **env: str) -> str:
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                                 "DVC_NO_ANALYTICS": "1", **GIT_IDENTITY, **env})
    assert result.returncode == 0, f"`{command}` failed in {cwd}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _new_repo(path: Path) -> Path:
    path.mkdir()
    sh("git init -q && dvc init -q && git commit -qm 'dvc init'", path)
    return path


def test_push_from_one_clone_and_pull_into_another(tmp_path):
    remote = tmp_path / "remote"
    repo = _new_repo(tmp_path / "repo")
    (repo / "data").mkdir()
    (repo / "data" / "notes.csv").write_text("text,label\nmy bag is lost,baggage\n")
    (repo / "data" / "more.csv").write_text("text,label\nflight 12 late,delay\n")
    sh(f"dvc add data && dvc remote add -d team {remote} && git add -A && git commit -qm data", repo)
    sh("dvc push", repo)
    stored = [p for p in remote.rglob("*") if p.is_file()]
    assert len(stored) == 3  # the two files and the folder's listing (.dir)
    clone = tmp_path / "clone"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    assert not (clone / "data").exists()  # git has only data.dvc
    sh("dvc pull", clone)
    for name in ("notes.csv", "more.csv"):
        assert (clone / "data" / name).read_bytes() == (repo / "data" / name).read_bytes()
    assert "are in sync" in sh("dvc status --cloud", clone)
    # a changed file travels back the same way
    (clone / "data" / "notes.csv").write_text("text,label\nmy bag is lost,baggage\nthanks,other\n")
    sh("dvc add data && git commit -qam 'more data' && dvc push", clone)
    sh(f"git pull -q {clone} HEAD && dvc pull", repo)
    assert (repo / "data" / "notes.csv").read_text().endswith("thanks,other\n")


def _documented_remote_commands() -> list[str]:
    """The ``dvc remote`` lines of the fenced block under "DVC remote" in docs/scaling.md."""
    text = (REPO / "docs" / "scaling.md").read_text()
    section = text[text.index("## DVC remote"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("dvc remote")]


def test_the_documented_minio_remote_keeps_credentials_out_of_git(tmp_path):
    commands = _documented_remote_commands()
    assert any("--local" in c and "access_key_id" in c for c in commands), commands
    repo = _new_repo(tmp_path / "repo")
    for command in commands:
        sh(command, repo, MINIO_ROOT_USER="team-user-123", MINIO_ROOT_PASSWORD="team-secret-456")
    shared, local = (repo / ".dvc" / "config").read_text(), (repo / ".dvc" / "config.local").read_text()
    assert "url = s3://dvc/selfsup" in shared and "endpointurl = http://" in shared and "remote = minio" in shared
    assert "team-user-123" not in shared and "team-secret-456" not in shared
    assert "access_key_id = team-user-123" in local and "secret_access_key = team-secret-456" in local
    # git sees the shared config change, never the local one (DVC's own .dvc/.gitignore lists it)
    status = sh("git status --porcelain --untracked-files=all", repo)
    assert ".dvc/config" in status and "config.local" not in status
    assert sh("dvc remote list", repo).split()[:2] == ["minio", "s3://dvc/selfsup"]
    shutil.rmtree(repo)
