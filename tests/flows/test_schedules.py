"""Schedules for real: the one serve command starts a local `prefect server` (SQLite, 127.0.0.1), registers the
deployments, the server's scheduler creates runs from a short interval schedule, and the serving process executes
one; `prefect deployment ls` lists them. Nothing is mocked."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIN = Path(sys.executable).parent



def _post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_serve_starts_a_server_and_runs_scheduled_deployments(tmp_path):
    project = copy_repo(tmp_path / "repo")
    port = free_port()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["orchestration"].update(server_port=port, monitor_interval_minutes=0.1, prefect_home=str(tmp_path / "ph"))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    env.update(PATH=f"{BIN}:{env['PATH']}", PREFECT_HOME=str(tmp_path / "client-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_RUNNER_POLL_FREQUENCY="2")
    log = (tmp_path / "serve.log").open("w")
    serving = subprocess.Popen([str(BIN / "python"), "-m", "flows.deployments", "--repo", str(project)], cwd=project,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 240
        completed, scheduled, monitor_id = [], [], None
        while time.monotonic() < deadline and not (completed and scheduled):
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(3)
            try:
                deployments = _post(f"{api}/deployments/filter", {})
                runs = _post(f"{api}/flow_runs/filter", {})
            except OSError:
                continue
            monitor_id = next((d["id"] for d in deployments if d["name"] == "monitor"), None)
            ours = [r for r in runs if r["deployment_id"] == monitor_id]
            completed = [r for r in ours if r["state_type"] == "COMPLETED"]
            scheduled = [r for r in ours if r["state_type"] == "SCHEDULED"]
        log_text = (tmp_path / "serve.log").read_text()
        assert monitor_id, log_text[-3000:]
        assert scheduled, f"the server created no scheduled runs\n{log_text[-3000:]}"
        assert completed, f"no scheduled run was executed by the serving process\n{log_text[-3000:]}"
        assert {d["name"] for d in deployments} == {"nightly", "monitor", "route"}
        nightly = next(d for d in deployments if d["name"] == "nightly")
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        listed = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], env={**env, "PREFECT_API_URL": api},
                                capture_output=True, text=True, timeout=120)
        assert "selfsup-training/nightly" in listed.stdout.replace("\n", ""), listed.stdout + listed.stderr
    finally:
        os.killpg(serving.pid, signal.SIGINT)
        try:
            serving.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
    _assert_server_goes_away(api, tmp_path / "ph" / "server.log")


def _assert_server_goes_away(api: str, server_log: Path, within: float = 45.0) -> None:
    """The guard gives the server 20 s to stop before killing its group; allow for a slow machine on top."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{api}/health", timeout=2)
        except OSError:
            return
        time.sleep(1)
    pytest.fail(f"the Prefect server still answers {within:.0f} s after the serving process ended\n"
                f"{server_log.read_text()[-2000:]}")


def test_a_killed_serving_process_leaves_no_server_behind(tmp_path, repo_root):
    """SIGKILL runs no cleanup code: the server must still go, because its guard sees the lifeline pipe close."""
    port = free_port()
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from flows.deployments import start_local_server\n"
        "from selfsup.config import load_config\n"
        f"cfg = load_config({str(repo_root / 'params.yaml')!r}, ['orchestration.server_port={port}', "
        f"'orchestration.prefect_home={tmp_path / 'ph'}'])\n"
        f"api, server = start_local_server(cfg, Path({str(tmp_path)!r}))\n"
        "print('up', server.guard.pid, flush=True)\n"
        "time.sleep(600)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "client-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    owner = subprocess.Popen([str(BIN / "python"), "-c", script], cwd=repo_root, env=env, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        line = owner.stdout.readline()
        assert line.startswith("up"), f"the server did not start: {line!r}"
        urllib.request.urlopen(f"{api}/health", timeout=5)  # it answers while its owner lives
        guard_pid = int(line.split()[1])
    finally:
        os.killpg(owner.pid, signal.SIGKILL)
        owner.wait()
    _assert_server_goes_away(api, tmp_path / "ph" / "server.log")
    deadline = time.monotonic() + 10
    while Path(f"/proc/{guard_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not Path(f"/proc/{guard_pid}").exists() or "zombie" in Path(f"/proc/{guard_pid}/status").read_text(), \
        "the guard is still running after the server went away"
