"""The service fed by a real MLflow registry (SQLite store): what it serves at start, and hot reload while requests
run — a real uvicorn on 127.0.0.1, real onnxruntime, the alias moved by `selfsup registry promote` / `rollback`."""

import json
import threading
import time
from pathlib import Path

import pytest

from conftest import LiveServer, export_tiny_classifier
from selfsup.config import load_config
from selfsup.serve.sources import NothingToServe, resolve

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # registering three versions and a live server: ~20-40 s



@pytest.fixture(scope="module")
def registry(tiny_tokenizer_dir, tmp_path_factory):
    """``selfsup-intent`` with versions 1 and 2 (passed the gate) and 3 (failed it); champion = v1."""
    from selfsup.adapters.mlflow import register_onnx, set_version_tags, stage_run
    from selfsup.registry.lifecycle import _make_champion, sha256_file

    # an earlier test in this process may have left MLFLOW_TRACKING_URI set (mlflow.set_tracking_uri exports it),
    # and the variable wins over the configuration
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)

    root = tmp_path_factory.mktemp("registry")
    overrides = [f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_location={root / 'art'}",
                 f"serve.models_dir={root / 'served'}", "serve.tasks=[intent]", "serve.poll_seconds=0.2"]
    cfg = load_config(REPO / "params.yaml", overrides)
    for seed in (1, 2, 3):
        folder = export_tiny_classifier(tiny_tokenizer_dir, root / f"export{seed}", seed=seed)
        with stage_run(cfg.tracking, "register intent", {"pipeline_key": "test"}) as tracker:
            files = [folder / name for name in ("tokenizer.json", "labels.json", "export.json")]
            version, _ = register_onnx(cfg.tracking, tracker.run_id, folder / "model.onnx", "selfsup-intent",
                                       {"test_macro_f1": 0.5}, {"task": "intent"}, files,
                                       fingerprint=sha256_file(folder / "model.onnx"))
        set_version_tags(cfg.tracking, "selfsup-intent", version, {"gate": "passed" if seed < 3 else "failed"})
    _make_champion(cfg, "selfsup-intent", 1, "test")
    yield cfg, overrides, root
    mp.undo()


def _wait_for_version(server: LiveServer, version: str, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while server.post("probe")[1] != version:
        assert time.time() < deadline, f"v{version} never answered"
        time.sleep(0.1)


def test_champion_moves_are_followed_without_a_failed_request(registry):
    from selfsup.registry.lifecycle import promote, rollback

    cfg, _, _ = registry
    answers: list[tuple[int, str]] = []
    stop = threading.Event()
    with LiveServer(cfg) as server:
        def client() -> None:
            while not stop.is_set():
                answers.append(server.post("my bag never arrived"))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(0.5)
            promote(cfg, "intent", 2)
            _wait_for_version(server, "2")
            time.sleep(0.3)
            rollback(cfg, "intent")
            _wait_for_version(server, "1")
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in clients:
                thread.join(10)
        metrics = server.get("/metrics")[1]
    statuses = [status for status, _ in answers]
    assert statuses and set(statuses) == {200}, f"{statuses.count(200)} of {len(statuses)} requests succeeded"
    versions = [version for _, version in answers]
    first_2, last_2 = versions.index("2"), len(versions) - 1 - versions[::-1].index("2")
    assert "1" in versions[:first_2] and "1" in versions[last_2:], "v1, then v2, then v1 again"
    assert 'selfsup_model_reloads_total{model="intent",outcome="swapped"} 2.0' in metrics
    assert 'selfsup_model_info{model="intent",name="selfsup-intent",version="1"} 1.0' in metrics
    assert 'version="2"} 1.0' not in metrics, "the version no longer served is not reported as served"


def test_a_new_champion_that_cannot_load_leaves_the_old_one_answering(registry):
    from selfsup.adapters.mlflow import set_alias

    cfg, _, root = registry
    broken = Path(cfg.serve.models_dir) / "intent" / "v2"  # where the service keeps v2 once fetched
    with LiveServer(cfg) as server:
        assert server.post("hello") == (200, "1")
        broken.mkdir(parents=True, exist_ok=True)
        (broken / "model.onnx").write_bytes(b"not a model")  # a damaged download, marked as held
        (broken / "version.json").write_text(json.dumps({"name": "selfsup-intent", "version": 2}))
        set_alias(cfg.tracking, "selfsup-intent", "champion", 2)
        try:
            deadline = time.time() + 20
            while 'outcome="failed"} 1.0' not in server.get("/metrics")[1]:
                assert time.time() < deadline, "the failed reload was never reported"
                time.sleep(0.1)
            assert server.post("hello") == (200, "1")
        finally:
            set_alias(cfg.tracking, "selfsup-intent", "champion", 1)
            for item in broken.iterdir():
                item.unlink()
            broken.rmdir()


def test_start_up_choices_and_what_it_says_when_there_is_nothing(registry, tmp_path):

    cfg, overrides, _ = registry
    loaded, source = resolve(cfg, "intent")
    assert (loaded.name, loaded.version, source.alias) == ("selfsup-intent", "1", "champion")
    no_alias = load_config(REPO / "params.yaml", [*overrides, "serve.alias=staging"])
    loaded, _ = resolve(no_alias, "intent")
    assert loaded.version == "2" and "no staging yet" in loaded.source, "the newest version that passed the gate"
    empty = load_config(REPO / "params.yaml", [*overrides, f"tracking.tracking_uri=sqlite:///{tmp_path / 'e.db'}",
                                               f"tracking.artifact_location={tmp_path / 'a'}"])
    with pytest.raises(NothingToServe, match="make run"):
        resolve(empty, "intent")
