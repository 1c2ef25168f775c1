"""The pipeline's MLflow calls against a real tracking server over HTTP, as a team runs them: a real ``mlflow server``
on 127.0.0.1 (SQLite backend, artifacts proxied by the server with ``--serve-artifacts``), and the project's own
logging, registration, gate, alias and download code, configured exactly as against the local SQLite store — only
``MLFLOW_TRACKING_URI`` differs. Then the serve image's venv (no torch, mlflow-skinny) serves the champion from that
server and follows it when it moves."""

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import export_tiny_classifier, free_port
from deploy.background import MlflowServer, clean_env, post_json, start, stop, wait_until_up
from deploy.registry import register_with_reports
from deploy.dockerfiles import exec_form

REPO = Path(__file__).resolve().parents[2]
NAME = "selfsup-intent"
TEXTS = ["my bag is lost", "can I change my flight", "two hours late again", "thanks!"]
pytestmark = pytest.mark.slow  # a real MLflow server (~10-20 s to start), two tiny exports, a registry over HTTP


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port()).start()
    try:
        yield server
    finally:
        server.stop()


def _register(cfg, project: Path, export: Path, macro_f1: float) -> list:
    return register_with_reports(cfg, project, export, macro_f1, REPO / "params.yaml")


@pytest.fixture(scope="module")
def team_registry(tracking_server, tiny_tokenizer_dir, tiny_onnx_classifier, tmp_path_factory):
    """A stage run logged, two versions registered and gated, all through the server; the configuration names a
    local SQLite store and artifact folder that must stay untouched, because MLFLOW_TRACKING_URI wins."""
    from selfsup.config import load_config
    from selfsup.registry.lifecycle import gate_versions
    from selfsup.tracking import open_run

    project = tmp_path_factory.mktemp("laptop")
    second = export_tiny_classifier(tiny_tokenizer_dir, project / "export-seed2", seed=2)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    mp.chdir(project)
    overrides = [f"tracking.tracking_uri=sqlite:///{project / 'local-mlflow.db'}",
                 f"tracking.artifact_location={project / 'local-artifacts'}", f"export.out_dir={project / 'onnx'}"]
    cfg = load_config(REPO / "params.yaml", overrides)
    # a training stage's tracking, as every stage logs it: parameters, a curve, an artifact
    (project / "report.json").write_text('{"val_loss": 1.25}')
    with open_run(cfg, "finetune", REPO / "params.yaml", cfg.finetune, task="intent") as tracker:
        for step, loss in enumerate([2.0, 1.5, 1.25]):
            tracker.log_metrics({"train_loss": loss}, step=step)
        tracker.log_artifact(project / "report.json")
    registered = [_register(cfg, project, tiny_onnx_classifier, 0.6), _register(cfg, project, second, 0.7)]
    decisions = gate_versions(cfg, "intent", {"flow_run": "test"})
    yield SimpleNamespace(cfg=cfg, project=project, run_id=tracker.run_id, registered=registered,
                          decisions=decisions, exports={1: tiny_onnx_classifier, 2: second})
    mp.undo()


def test_logging_registration_gate_aliases_and_download_go_through_the_server(tracking_server, team_registry, tmp_path):
    from mlflow import MlflowClient

    from selfsup.config import config_to_dict
    from selfsup.registry.lifecycle import fetch_model, list_versions, promote, rollback
    from selfsup.tracking import flatten

    cfg, exports = team_registry.cfg, team_registry.exports
    client = MlflowClient(tracking_server.url)
    # logging: the stage run, its parameters, curve and artifact are on the server
    run = client.get_run(team_registry.run_id)
    assert run.data.tags["stage"] == "finetune" and run.data.tags["task"] == "intent"
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in flatten(config_to_dict(cfg.finetune)).items()}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [2.0, 1.5, 1.25]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.json"]
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    # registration: two new versions, each tagged with its metrics and ONNX fingerprint
    assert [(r.version, r.new) for (r,) in team_registry.registered] == [(1, True), (2, True)]
    rows = {row["version"]: row for row in list_versions(cfg, "intent")}
    assert rows[2]["tags"]["onnx_sha256"] == _sha256(exports[2] / "model.onnx")
    assert rows[2]["tags"]["metric.test_macro_f1"] == "0.7"
    # the gate: both pass; the better second one took champion from the first
    assert [(d.version, d.verdict.passed, d.aliases) for d in team_registry.decisions] == [
        (1, True, ["challenger", "champion"]), (2, True, ["challenger", "champion"])]
    assert rows[2]["aliases"] == ["challenger", "champion"] and rows[1]["tags"]["gate"] == "passed"
    # aliases by hand, then the champion downloaded as an export folder
    assert rollback(cfg, "intent") == (2, 1)
    assert promote(cfg, "intent", 2) == 1
    version, folder = fetch_model(cfg, "intent", "champion", tmp_path / "champion")
    assert version == 2 and _sha256(folder / "model.onnx") == _sha256(exports[2] / "model.onnx")
    assert {"tokenizer.json", "labels.json", "export.json", "version.json"} <= {p.name for p in folder.iterdir()}
    # every byte went to the server: its artifact store holds both models, the configured local store nothing
    served = {_sha256(p) for p in tracking_server.artifacts.rglob("model.onnx")}
    assert {_sha256(exports[1] / "model.onnx"), _sha256(exports[2] / "model.onnx")} <= served
    assert not (team_registry.project / "local-mlflow.db").exists()
    assert not (team_registry.project / "local-artifacts").exists()
    assert not (team_registry.project / "mlruns").exists()


def test_the_serve_image_serves_the_champion_from_the_server_and_follows_it(tracking_server, team_registry,
                                                                            serve_image, tmp_path):
    """The slim image's venv (no torch; the MLflow client is mlflow-skinny) pointed at the server by
    MLFLOW_TRACKING_URI alone, as in docker/compose.yaml, with the image's own command."""
    from selfsup.adapters.mlflow import alias_version
    from selfsup.registry.lifecycle import promote, rollback
    from selfsup.serve.predict import OnnxClassifier

    cfg = team_registry.cfg
    if alias_version(cfg.tracking, NAME, "champion") != 2:
        promote(cfg, "intent", 2)
    expected = {version: [p.label for p in OnnxClassifier(folder).predict(TEXTS)]
                for version, folder in team_registry.exports.items()}
    port = str(free_port())
    command = exec_form(serve_image.final.last("CMD"))
    command[command.index("--host") + 1], command[command.index("--port") + 1] = "127.0.0.1", port
    command[0] = str(serve_image.bin / command[0])
    command += ["serve.tasks=[intent]", "serve.poll_seconds=0.5", f"serve.models_dir={tmp_path / 'served'}"]
    log = tmp_path / "serve.log"
    env = clean_env(PATH=f"{serve_image.bin}:/usr/bin:/bin", MLFLOW_TRACKING_URI=tracking_server.url)
    server = start(command, log, cwd=serve_image.app, env=env)
    url = f"http://127.0.0.1:{port}/v1/intent"
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/readyz", log, "selfsup serve (serve image, registry)")
        status, body = post_json(url, {"text": TEXTS})
        assert status == 200 and (body["model"], body["version"]) == (NAME, "2"), body
        assert [row["label"] for row in body["results"]] == expected[2]
        rollback(cfg, "intent")  # champion -> v1: the service must notice on its own
        deadline = time.monotonic() + 60
        while body["version"] != "1" and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = post_json(url, {"text": TEXTS})
            assert status == 200, body  # not one failed request while the model is swapped
        assert body["version"] == "1", f"still serving v{body['version']} 60 s after the rollback:\n{log.read_text()[-3000:]}"
        assert [row["label"] for row in body["results"]] == expected[1]
    finally:
        stop(server)
        if alias_version(cfg.tracking, NAME, "champion") != 2:
            promote(cfg, "intent", 2)
