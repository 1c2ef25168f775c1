"""Real servers for the deployment tests (``mlflow server``, ``selfsup serve`` from another venv): started in a
process group of their own with their output in a log file, waited for over HTTP, and stopped as a whole group
(a server's worker children included) at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def start(command: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """``command`` in a new session (so ``stop`` can end its children too), stdout and stderr into ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def wait_until_up(process: subprocess.Popen, url: str, log: Path, what: str, timeout: float = 180) -> None:
    """Until ``url`` answers 200; fails the test with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{what} did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop the process group: SIGTERM, then SIGKILL after 20 s."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_json(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would let another venv import this checkout or point it
    at another MLflow store, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV"}}
    return {**env, **extra}


class MlflowServer:
    """``mlflow server`` as docs/scaling.md runs it, with SQLite instead of PostgreSQL and a folder instead of S3
    (artifacts proxied by the server, ``--serve-artifacts``), under ``root``. It can be stopped and started again
    on the same port and store, as a team's server restarts."""

    def __init__(self, root: Path, port: int):
        import sys

        self.root, self.port, self.log = root, port, root / "server.log"
        self.url = f"http://127.0.0.1:{port}"
        self.artifacts = root / "served-artifacts"
        self.command = [str(Path(sys.executable).parent / "mlflow"), "server",
                        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                        "--artifacts-destination", str(self.artifacts), "--serve-artifacts",
                        "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.process: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.process = start(self.command, self.log, cwd=self.root,
                             env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        wait_until_up(self.process, f"{self.url}/health", self.log, "mlflow server")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
