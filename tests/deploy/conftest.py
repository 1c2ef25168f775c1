"""The serve image's Python environment, for the tests that start the service from it."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.dockerfiles import materialize, stages

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def serve_image(tmp_path_factory) -> SimpleNamespace:
    """docker/serve.Dockerfile carried out without Docker: its COPY instructions into folders standing in for the
    build stage (``/src``) and the final image (``/app``), and its two pip installs into a clean venv — the pinned
    service requirements with requirements.lock as constraints, then the package with ``--no-deps``. pip's cache
    makes a second build quick; the first downloads ~100 MB from PyPI (about 1.5 minutes)."""
    root = tmp_path_factory.mktemp("serve-image")
    build, final = stages(REPO / "docker" / "serve.Dockerfile")
    src = materialize(build, REPO, root / "build")
    app = materialize(final, REPO, root / "image")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in (["-c", "requirements.lock", "-r", "serve-requirements.txt"], ["--no-deps", "."]):
        result = subprocess.run(pip + args, cwd=src, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"pip install {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return SimpleNamespace(venv=venv, python=venv / "bin" / "python", bin=venv / "bin", app=app, final=final)
