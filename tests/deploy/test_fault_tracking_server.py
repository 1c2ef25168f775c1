"""A tracking server that stops while the pipeline works: training finishes and keeps its outputs, the failure is
reported with the server's address, and the registry never holds a half-registered version, so the next run
registers the model exactly once. A real ``mlflow server`` on 127.0.0.1, stopped (process group, SIGTERM) mid-run
and at the two moments around the creation of a model version."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from deploy.background import MlflowServer, clean_env
from deploy.registry import register_with_reports

REPO = Path(__file__).resolve().parents[2]
NAME = "selfsup-intent"
# MLflow retries a request to a server that is gone 7 times (about 4 minutes) before it gives up: the knob a user
# turns to fail faster, turned here so that each lost call costs seconds
QUICK_GIVE_UP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MAX_STEPS = 400  # long enough that the server is gone well before the run ends (checked, not assumed)
pytestmark = pytest.mark.slow  # a real MLflow server started 5 times (~10-20 s each) and a pretraining run


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root, free_port()).start()
    yield server
    server.stop()


def _pretrain(tmp: Path, tokenizer_dir: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "selfsup"), "--params", str(REPO / "params.yaml"), "pretrain",
            "--checkpoint-dir", str(tmp / "checkpoint"),
            "preset=tiny", "tracking.enabled=true", "pretrain.loop.progress=false", "pretrain.loop.threads=1",
            f"data.corpus={REPO / 'tests/fixtures/data/corpus/unlabeled.jsonl'}", f"tokenizer.out_dir={tokenizer_dir}",
            f"pretrain.out_dir={tmp / 'mlm'}", f"pretrain.metrics_dir={tmp / 'metrics'}",
            f"pretrain.max_steps={MAX_STEPS}", "pretrain.checkpoint_every=5", "pretrain.eval_every=100"]


def test_training_finishes_and_keeps_its_outputs_when_the_server_stops_mid_run(server, tiny_tokenizer_dir, tmp_path):
    from mlflow import MlflowClient

    env = clean_env(MLFLOW_TRACKING_URI=server.url, PYTHONPATH=str(REPO / "src"), **QUICK_GIVE_UP)
    process = subprocess.Popen(_pretrain(tmp_path, tiny_tokenizer_dir), cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (tmp_path / "checkpoint/state.pt").exists():  # the run is on the server and training is under way
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    server.stop()
    assert process.poll() is None, "training ended before the server stopped: nothing was tested"
    out, err = process.communicate(timeout=600)

    assert process.returncode == 0, err[-3000:]
    assert (tmp_path / "mlm/model.safetensors").exists()
    assert json.loads((tmp_path / "metrics/metrics.json").read_text())["steps"] == MAX_STEPS
    assert f"MLflow tracking store {server.url} failed while logging" in err and "keeps its outputs" in err, err
    assert "Traceback" not in err
    # a command that needs the server while it is down: one clear line, no traceback
    listed = subprocess.run([str(Path(sys.executable).parent / "selfsup"), "--params", str(REPO / "params.yaml"),
                             "registry", "list"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 1 and f"tracking error: MLflow tracking store {server.url}" in listed.stderr
    assert "Traceback" not in listed.stderr, listed.stderr

    server.start()  # what the server recorded stops where it went away: the run never ended
    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("selfsup").experiment_id],
                                filter_string="tags.stage = 'pretrain_mlm'")
    assert run.info.status == "RUNNING"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) < MAX_STEPS


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_registration_cut_short_leaves_no_half_registered_version(moment, server, tiny_onnx_classifier, tmp_path,
                                                                     monkeypatch):
    """The server stops just before, or just after, the request that creates the model version; either way the
    step fails with the server's address. Before: nothing is registered. After: the version exists with its
    fingerprint and numbers (they are created in that one request, never tagged afterwards). Either way, the next
    run registers the model exactly once."""
    import mlflow.utils.rest_utils as rest
    from mlflow import MlflowClient

    from selfsup.config import load_config
    from selfsup.errors import TrackingUnavailable

    project = tmp_path / "project"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    for key, value in QUICK_GIVE_UP.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "params.yaml", [f"tracking.artifact_location={project / 'local-artifacts'}",
                                             f"export.out_dir={project / 'onnx'}"])
    real_request = rest.http_request

    def request_then_cut(**kwargs):
        creates_version = kwargs["endpoint"].endswith("/model-versions/create")
        if creates_version and moment == "before":
            server.stop()
        response = real_request(**kwargs)
        if creates_version and moment == "after":
            server.stop()
        return response

    monkeypatch.setattr(rest, "http_request", request_then_cut)
    # after: MLflow still reads the new version back (and the logged model) to finish, so the step fails too
    with pytest.raises(TrackingUnavailable, match=f"{server.url} failed while registering {NAME}"):
        register_with_reports(cfg, project, tiny_onnx_classifier, 0.6, REPO / "params.yaml")
    monkeypatch.setattr(rest, "http_request", real_request)

    server.start()
    client = MlflowClient(server.url)
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == (0 if moment == "before" else 1)
    assert all({"onnx_sha256", "metric.test_macro_f1", "task"} <= set(v.tags) for v in versions)
    (again,) = register_with_reports(cfg, project, tiny_onnx_classifier, 0.6, REPO / "params.yaml")
    assert (again.version, again.new) == (1, moment == "before")
    (again,) = register_with_reports(cfg, project, tiny_onnx_classifier, 0.6, REPO / "params.yaml")
    assert (again.version, again.new) == (1, False)
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert {"onnx_sha256", "metric.test_macro_f1", "task"} <= set(version.tags)
