"""Faults around a running service: the served model's folder deleted or damaged under it, and the registry gone.
A real uvicorn on 127.0.0.1 (configured as `selfsup serve` configures it), real onnxruntime, a real MLflow registry
(SQLite store) that the service follows every 0.2 s; the registry is made unreachable by pointing
MLFLOW_TRACKING_URI at a port where nothing listens."""

import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import LiveServer, export_tiny_classifier, free_port
from selfsup.config import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # two registered versions and a live server: ~30-60 s


@pytest.fixture(scope="module")
def registry(tiny_tokenizer_dir, tmp_path_factory):
    """``selfsup-intent`` versions 1 and 2, both passed the gate; champion = v1."""
    from selfsup.adapters.mlflow import register_onnx, set_version_tags, stage_run
    from selfsup.registry.lifecycle import _make_champion, sha256_file

    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the variable would win over the configuration
    root = tmp_path_factory.mktemp("registry")
    cfg = load_config(REPO / "params.yaml", [
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_location={root / 'art'}",
        f"serve.models_dir={root / 'served'}", "serve.tasks=[intent]", "serve.poll_seconds=0.2"])
    for seed in (1, 2):
        folder = export_tiny_classifier(tiny_tokenizer_dir, root / f"export{seed}", seed=seed)
        with stage_run(cfg.tracking, "register intent", {"pipeline_key": "test"}) as tracker:
            files = [folder / name for name in ("tokenizer.json", "labels.json", "export.json")]
            version, _ = register_onnx(cfg.tracking, tracker.run_id, folder / "model.onnx", "selfsup-intent",
                                       {"test_macro_f1": 0.5}, {"task": "intent"}, files,
                                       fingerprint=sha256_file(folder / "model.onnx"))
        set_version_tags(cfg.tracking, "selfsup-intent", version, {"gate": "passed"})
    _make_champion(cfg, "selfsup-intent", 1, "test")
    yield cfg
    mp.undo()


class Clients:
    """Threads posting to /v1/intent without pause while a fault is injected; every answer is kept."""

    def __init__(self, server: LiveServer, count: int = 3):
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(server,)) for _ in range(count)]

    def _run(self, server: LiveServer) -> None:
        while not self._stop.is_set():
            self.answers.append(server.post("my bag never arrived"))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_fault_served_folder_damaged_then_deleted_keeps_answering_and_readyz_says_why(registry):
    from selfsup.registry.lifecycle import promote, rollback

    cfg = registry
    folder = Path(cfg.serve.models_dir) / "intent" / "v1"
    with LiveServer(cfg) as server, Clients(server) as clients:
        status, ready = server.readyz()
        assert status == 200 and ready["status"] == "ok" and ready["models"]["intent"]["status"] == "ok", ready
        assert ready["registry"]["status"] == "ok"

        (folder / "model.onnx").write_bytes(b"not a model any more")  # damaged under the running service
        status, ready = server.readyz()
        assert status == 200 and ready["ready"] and ready["status"] == "degraded", ready
        problem = ready["models"]["intent"]["problem"]
        assert "model.onnx" in problem and "changed since it was loaded" in problem and "-> 20 bytes" in problem
        assert server.post("still there?") == (200, "1"), "the loaded model answers from memory"

        shutil.rmtree(folder)  # and then deleted
        status, ready = server.readyz()
        assert status == 200 and ready["ready"] and "is gone" in ready["models"]["intent"]["problem"], ready
        assert server.post("still there?") == (200, "1")

        promote(cfg, "intent", 2)  # a new champion: fetched and loaded from a fresh folder, all well again
        server.wait_for(lambda: server.post("probe")[1] == "2", "v2 answers")
        assert server.readyz()[1]["status"] == "ok"
        rollback(cfg, "intent")  # back to v1, whose folder is gone: fetched again from the registry
        server.wait_for(lambda: server.post("probe")[1] == "1", "v1 answers again")
        status, ready = server.readyz()
        assert status == 200 and ready["status"] == "ok" and ready["models"]["intent"]["version"] == "1", ready
        assert (folder / "model.onnx").stat().st_size > 1000, "v1 was downloaded again"
    statuses = [status for status, _ in clients.answers]
    assert statuses and set(statuses) == {200}, f"{statuses.count(200)} of {len(statuses)} requests succeeded"


def test_fault_registry_unreachable_keeps_serving_and_readyz_and_metrics_say_so(registry, monkeypatch):
    cfg = registry
    with LiveServer(cfg) as server, Clients(server) as clients:
        served = server.post("hello")
        assert served[0] == 200
        # a dead tracking server: nothing listens on the port; no retries, so each poll fails fast
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        ready = server.wait_for(lambda: (lambda r: r if r[1]["registry"]["status"] == "unreachable" else None)(
            server.readyz()), "/readyz reports the registry unreachable")
        status, body = ready
        assert status == 200 and body["ready"] and body["status"] == "degraded", body
        assert body["registry"]["error"] and body["registry"]["failed_reads"] >= 1
        assert any(p.startswith("registry:") for p in body["problems"])
        assert body["models"]["intent"]["status"] == "ok", "the model itself is fine"
        time.sleep(1)  # several failed polls while requests keep coming
        metrics = server.get("/metrics")[1]
        failed = next(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith('selfsup_model_reloads_total{model="intent",outcome="registry_error"}'))
        assert failed >= 2, metrics
        assert server.post("hello") == served, "the same version keeps answering"

        monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the registry is back
        server.wait_for(lambda: server.readyz()[1]["registry"]["status"] == "ok", "/readyz reports it back")
        assert server.readyz()[1]["status"] == "ok"
    statuses = [status for status, _ in clients.answers]
    assert statuses and set(statuses) == {200}, f"{statuses.count(200)} of {len(statuses)} requests succeeded"
