"""Every deployment and its schedule, declared once, and the one command that runs them.

    python -m flows.deployments [--repo .]      (or: make orchestrate)

* ``selfsup-training/nightly`` — the training flow on ``orchestration.training_cron`` (default 02:00 UTC)
* ``selfsup-sentiment-monitor/monitor`` — every ``orchestration.monitor_interval_minutes``
* ``selfsup-intent-routing/route`` — every ``orchestration.route_interval_minutes``

Cron and interval schedules fire only against a running Prefect server (not the ephemeral API a plain flow call
starts). Unless ``PREFECT_API_URL`` points at a server already, this starts one on ``orchestration.server_host:
server_port`` with its SQLite database under ``orchestration.prefect_home`` and analytics off, waits until it is
healthy, then serves the deployments from this process (flow runs execute here, in subprocesses) until Ctrl-C,
which stops the server too. The server runs under ``flows.server_guard``, which stops it when this process ends in
any way, SIGKILL included. A team points ``PREFECT_API_URL`` at its shared server and changes nothing else.

While it runs: ``prefect deployment ls``, ``prefect deployment run 'selfsup-training/nightly'``, and the UI at
http://127.0.0.1:4200 (each flow run's page shows one task per pipeline stage, its logs and the MLflow link).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from prefect.schedules import Cron, Interval

from flows.monitoring import monitor_sentiment
from flows.routing import route_messages
from flows.training import training


def build_deployments(cfg, repo: Path) -> list:
    """The deployments, with their schedules from ``params.yaml`` ``orchestration``."""
    o = cfg.orchestration
    params = {"repo": str(repo)}
    return [
        training.to_deployment(name="nightly", schedules=[Cron(o.training_cron, timezone=o.timezone)],
                               parameters=params, tags=["selfsup", "training"],
                               description="dvc repro stage by stage, quality gate, champion/challenger aliases"),
        monitor_sentiment.to_deployment(name="monitor", schedules=[Interval(timedelta(minutes=o.monitor_interval_minutes))],
                                        parameters=params, tags=["selfsup", "monitoring"],
                                        description="score new inbox batches, alert on a negative surge"),
        route_messages.to_deployment(name="route", schedules=[Interval(timedelta(minutes=o.route_interval_minutes))],
                                     parameters=params, tags=["selfsup", "routing"],
                                     description="route new customer messages; low confidence to needs_human"),
    ]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class LocalServer:
    """A ``prefect server`` started by ``start_local_server``, watched by ``flows.server_guard``.

    ``lifeline`` is the write end of the guard's stdin pipe, held only by this process: closing it, or this process
    dying in any way, makes the guard stop the server's whole process group."""

    def __init__(self, api_url: str, guard: subprocess.Popen, lifeline: int):
        self.api_url, self.guard, self.lifeline = api_url, guard, lifeline

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server; return only once the guard has exited and the API no longer answers."""
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        try:
            self.guard.wait(timeout=timeout)  # the guard allows the server 20 s to stop, then kills its group
        except subprocess.TimeoutExpired:
            self.guard.kill()
            self.guard.wait()
        deadline = time.monotonic() + 10
        while _healthy(self.api_url) and time.monotonic() < deadline:
            time.sleep(0.5)


def start_local_server(cfg, repo: Path, timeout: float = 180.0) -> tuple[str, LocalServer | None]:
    """Start ``prefect server start`` on ``orchestration.server_host:server_port`` under ``flows.server_guard``,
    unless a server already answers there; returns (api url, the server or None)."""
    o = cfg.orchestration
    api_url = f"http://{o.server_host}:{o.server_port}/api"
    if _healthy(api_url):
        return api_url, None
    home = (repo / o.prefect_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    flows_root = str(Path(__file__).resolve().parents[1])  # so the guard's `-m flows.server_guard` imports
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "true", "PREFECT_API_URL": api_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [flows_root, os.environ.get("PYTHONPATH")]))}
    log_path = home / "server.log"
    prefect = Path(sys.executable).parent / "prefect"
    read_end, lifeline = os.pipe()  # both non-inheritable: flow-run subprocesses never hold the lifeline
    with log_path.open("ab") as log:
        guard = subprocess.Popen(
            [sys.executable, "-m", "flows.server_guard", str(prefect), "server", "start", "--host", o.server_host,
             "--port", str(o.server_port)],
            env=env, stdin=read_end, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    os.close(read_end)
    server = LocalServer(api_url, guard, lifeline)
    deadline = time.monotonic() + timeout
    while not _healthy(api_url):
        if guard.poll() is not None:
            server.stop()
            raise RuntimeError(f"prefect server exited with code {guard.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"prefect server did not answer on {api_url} within {timeout:.0f} s; see {log_path}")
        time.sleep(0.5)
    return api_url, server


def serve(repo: str = ".") -> None:
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from selfsup.config import load_config

    root = Path(repo).resolve()
    cfg = load_config(root / "params.yaml")
    # flow runs execute in subprocesses that import flows/ by entrypoint: make the package importable there
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    api_url = os.environ.get("PREFECT_API_URL")
    server = None
    if not api_url:
        api_url, server = start_local_server(cfg, root)
        print(f"Prefect server: {api_url.removesuffix('/api')} (SQLite under {cfg.orchestration.prefect_home}/); "
              f"in another shell: export PREFECT_API_URL={api_url}", flush=True)
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            prefect_serve(*build_deployments(cfg, root))
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="the project folder (default: .)")
    args = parser.parse_args(argv)
    serve(args.repo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
