"""Deployments a worker picks up (prefect.yaml), for real: a `prefect server` on 127.0.0.1, the `process` work pool
created and the deployments registered with the documented commands, a `prefect worker` started outside the project
folder, and a flow run created through the Prefect client that the worker runs in the project its pull step names:
the routing flow classifies a real batch with a champion from a real MLflow registry and the run reaches Completed.

The first tests need no server: prefect.yaml agrees with params.yaml, the flows and the flows image."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_repo, export_tiny_classifier, free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
POOL = "selfsup-process"


def _prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_prefect_yaml_schedules_match_params_yaml(repo_root):
    from selfsup.config import load_config

    o = load_config(repo_root / "params.yaml").orchestration
    by_entrypoint = {d["entrypoint"]: d for d in _prefect_yaml()["deployments"]}
    assert set(by_entrypoint) == {"flows/training.py:training", "flows/monitoring.py:monitor_sentiment",
                                  "flows/routing.py:route_messages"}
    assert by_entrypoint["flows/training.py:training"]["schedules"] == [
        {"cron": o.training_cron, "timezone": o.timezone}], "prefect.yaml: nightly-pool cron vs orchestration.training_cron"
    assert by_entrypoint["flows/monitoring.py:monitor_sentiment"]["schedules"] == [
        {"interval": o.monitor_interval_minutes * 60}], "prefect.yaml: monitor-pool vs orchestration.monitor_interval_minutes"
    assert by_entrypoint["flows/routing.py:route_messages"]["schedules"] == [
        {"interval": o.route_interval_minutes * 60}], "prefect.yaml: route-pool vs orchestration.route_interval_minutes"


def test_pool_deployments_load_and_never_overwrite_the_served_ones(repo_root):
    from prefect.flows import load_flow_from_entrypoint

    from flows.deployments import build_deployments
    from selfsup.config import load_config

    spec = _prefect_yaml()
    served = {(d.flow_name, d.name) for d in build_deployments(load_config(repo_root / "params.yaml"), repo_root)}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(repo_root / deployment["entrypoint"]))
        assert (flow.name, deployment["name"]) not in served, f"{deployment['name']} would replace a served deployment"
        assert deployment["work_pool"]["name"] == POOL
        assert set(deployment["parameters"]) <= set(flow.parameters.properties), deployment["name"]
    # the pull step resolves the worker's own checkout at run time (a literal path would pin the deploying machine's)
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory":
                             {"directory": "{{ $SELFSUP_PROJECT_DIR }}"}}]


def test_the_flows_image_runs_a_worker_on_the_same_pool(repo_root):
    dockerfile = repo_root / "docker" / "flows.Dockerfile"
    if not dockerfile.exists():
        pytest.skip("docker/flows.Dockerfile is not there")
    cmd = next(line for line in dockerfile.read_text().splitlines() if line.startswith("CMD"))
    assert f'"--pool", "{POOL}"' in cmd and '"--type", "process"' in cmd, cmd


# --- the end-to-end run -------------------------------------------------------------------------------------------

def _crown_tiny_intent_model(project: Path, tokenizer_dir: Path) -> None:
    """A tiny intent classifier exported to ONNX, registered in the project's own MLflow store (its relative
    ``mlflow/`` path), marked as passed and promoted champion as ``selfsup registry promote`` does."""
    from selfsup.adapters.mlflow import register_onnx, set_version_tags, stage_run
    from selfsup.config import load_config
    from selfsup.registry.lifecycle import model_name, promote, sha256_file

    cfg = load_config(project / "params.yaml")
    folder = export_tiny_classifier(tokenizer_dir, project / "work" / "intent-onnx", seed=1,
                                    labels=cfg.data.tasks["intent"].labels)
    name = model_name(cfg, "intent")
    with stage_run(cfg.tracking, "register intent", {"pipeline_key": "work-pool-test"}) as tracker:
        version, _ = register_onnx(cfg.tracking, tracker.run_id, folder / "model.onnx", name, {"test_macro_f1": 0.5},
                                   {"task": "intent"}, [folder / n for n in ("tokenizer.json", "labels.json",
                                                                            "export.json")],
                                   fingerprint=sha256_file(folder / "model.onnx"))
    set_version_tags(cfg.tracking, name, version, {"gate": "passed"})
    promote(cfg, "intent", version)


def _write_batch(project: Path, fixture_data: Path) -> int:
    with (fixture_data / "intent" / "test.csv").open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    batch = project / "incoming" / "intent" / "batch-001.csv"
    batch.parent.mkdir(parents=True, exist_ok=True)
    with batch.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((f"m{i}", text) for i, text in enumerate(texts))
    return len(texts)


def _prefect(args: list[str], cwd: Path, env: dict, timeout: float = 180) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


class GuardedWorker:
    """``prefect worker start`` under ``flows/server_guard.py`` (run by path: it imports only the standard library),
    so the worker and its flow-run subprocesses go even if this test process is killed: the guard watches a pipe
    only this process holds. ``stop`` closes it; the guard then SIGTERMs the worker's process group and SIGKILLs it
    after its grace period (an idle worker has been seen to ignore the first SIGTERM: Prefect treats the first as a
    request to finish the runs in hand)."""

    def __init__(self, cwd: Path, env: dict, log: Path):
        read_end, self.lifeline = os.pipe()
        with log.open("w") as out:
            self.guard = subprocess.Popen(
                [sys.executable, str(REPO / "flows" / "server_guard.py"), str(BIN / "prefect"), "worker", "start",
                 "--pool", POOL], cwd=cwd, env=env, stdin=read_end, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        os.close(read_end)

    def stop(self, timeout: float = 60.0) -> None:
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        try:
            self.guard.wait(timeout=timeout)  # returns once the worker's group is gone
        except subprocess.TimeoutExpired:
            os.killpg(self.guard.pid, signal.SIGKILL)
            self.guard.wait()


@pytest.mark.e2e
@pytest.mark.slow  # server, CLI, worker and one flow run: 190-200 s measured on a busy 2-core machine
def test_a_worker_on_the_process_pool_runs_a_prefect_yaml_deployment(tmp_path, fixture_data, tiny_tokenizer_dir,
                                                                     monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import start_local_server
    from selfsup.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's params.yaml names the store
    project = copy_repo(tmp_path / "repo")
    monkeypatch.chdir(project)  # the tracking store is the project's relative mlflow/
    _crown_tiny_intent_model(project, tiny_tokenizer_dir)
    rows = _write_batch(project, fixture_data)

    # The server's scheduler stays off: the pool deployments' interval schedules would otherwise add runs the worker
    # races for (schedules firing against a real server are covered by test_schedules.py).
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "false")
    monkeypatch.setenv("PREFECT_UI_ENABLED", "false")
    cfg = load_config(project / "params.yaml", [f"orchestration.server_port={free_port()}",
                                                f"orchestration.prefect_home={tmp_path / 'server-home'}"])
    api, server = start_local_server(cfg, project)
    assert server is not None, f"something already answered on {api}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "client-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2")
    elsewhere = tmp_path / "worker-cwd"  # not the project: the pull step must take the run there
    elsewhere.mkdir()
    worker = None
    worker_log = tmp_path / "worker.log"
    try:
        _prefect(["work-pool", "create", POOL, "--type", "process"], elsewhere, env)
        _prefect(["--no-prompt", "deploy", "--all"], project, env)
        worker = GuardedWorker(elsewhere, {**env, "SELFSUP_PROJECT_DIR": str(project)}, worker_log)

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("selfsup-intent-routing/route-pool")
            assert deployment.work_pool_name == POOL
            # stored unresolved: each worker reads SELFSUP_PROJECT_DIR from its own environment at run time
            assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                              {"directory": "{{ $SELFSUP_PROJECT_DIR }}"}}]
            nightly = client.read_deployment_by_name("selfsup-training/nightly-pool")
            assert [s.schedule.cron for s in nightly.schedules] == [cfg.orchestration.training_cron]

            run = client.create_flow_run_from_deployment(deployment.id)
            deadline = time.monotonic() + 300
            state = client.read_flow_run(run.id).state
            while not (state and state.is_final()) and time.monotonic() < deadline:
                time.sleep(2)
                state = client.read_flow_run(run.id).state
            finished = client.read_flow_run(run.id)

        log_text = worker_log.read_text()
        assert state is not None and state.type == StateType.COMPLETED, \
            f"flow run state {state.type if state else None}: {state.message if state else ''}\n{log_text[-4000:]}"
        assert finished.work_pool_name == POOL and finished.deployment_id == deployment.id
        assert "set_working_directory" in log_text, log_text[-3000:]
        # the flow did its work in the project the pull step named, not in the worker's folder
        routed = list(csv.DictReader((project / "routing/intent/routed/batch-001.csv").open(encoding="utf-8")))
        assert len(routed) == rows and {r["intent"] for r in routed} <= set(cfg.data.tasks["intent"].labels)
        assert not (project / "incoming/intent/batch-001.csv").exists(), "the batch was not marked processed"
        assert not any(elsewhere.iterdir()), f"the flow wrote into the worker's folder: {list(elsewhere.iterdir())}"
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
    assert worker.guard.returncode == 0, f"the worker's guard did not stop cleanly\n{worker_log.read_text()[-2000:]}"
