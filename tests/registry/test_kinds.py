"""The ModelKind table: each registry task maps to one kind, and the by-hand registry commands refuse cleanly on a
registry that holds nothing yet (a real, empty MLflow SQLite store)."""

from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.config import EMBEDDER_TASK, IMAGE_TASK, load_config
from selfsup.registry.kinds import (EMBEDDER, IMAGE, TEXT, RegistryError, embedder_metrics, kind_of, model_name,
                                   registry_tasks)

REPO = Path(__file__).resolve().parents[2]


def test_every_registry_task_has_its_kind_and_name():
    cfg = load_config(REPO / "params.yaml")
    assert registry_tasks(cfg) == [*cfg.data.tasks, IMAGE_TASK, EMBEDDER_TASK]
    assert {task: kind_of(cfg, task) for task in cfg.data.tasks} == {task: TEXT for task in cfg.data.tasks}
    assert kind_of(cfg, IMAGE_TASK) is IMAGE
    assert model_name(cfg, "intent") == f"{cfg.export.registered_model_prefix}-intent"
    assert model_name(cfg, IMAGE_TASK) == cfg.vision.export.registered_model
    assert kind_of(cfg, EMBEDDER_TASK) is EMBEDDER and model_name(cfg, EMBEDDER_TASK) == "selfsup-embedder"
    with pytest.raises(RegistryError, match="unknown task 'weather'"):
        kind_of(cfg, "weather")


@pytest.mark.parametrize("command", [["registry", "rollback", "intent"], ["registry", "promote", "intent", "1"],
                                     ["registry", "rollback", IMAGE_TASK]])
def test_by_hand_commands_on_an_empty_registry_refuse_with_a_message(command, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    store = [f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
             f"tracking.artifact_location={tmp_path / 'artifacts'}"]
    assert main(["--params", str(REPO / "params.yaml"), *command, *store]) == 1
    err = capsys.readouterr().err
    assert ("has no champion to roll back" in err) or ("has no version 1; versions: none" in err)
    assert "Traceback" not in err


def test_embedder_metrics_come_from_the_retrieval_and_export_reports():
    def method(acc):
        return {"answer": {"accuracy_at_1": acc, "recall_at_3": acc + 0.2, "mrr_at_10": acc + 0.1},
                "articles_precision_at_5": acc + 0.4}

    retrieval = {"tfidf": method(0.3), "mlm_mean": method(0.2), "simcse": method(0.25), "queries": {}}
    export = {"top1_agreement": {"answers": 1.0, "articles": 0.99}, "max_abs_diff": 2e-7}
    metrics = embedder_metrics(retrieval, export)
    assert metrics["accuracy_at_1"] == 0.25 and metrics["articles_precision_at_5"] == pytest.approx(0.65)
    assert metrics["tfidf_accuracy_at_1"] == 0.3 and metrics["mlm_mean_mrr_at_10"] == pytest.approx(0.3)
    assert metrics["onnx_top1_agreement"] == 0.99  # the worse index
    assert metrics["onnx_max_abs_diff"] == 2e-7


def test_the_embedder_identity_covers_its_indexes(tmp_path):
    """A new knowledge base with the same encoder is a new version: the fingerprint covers the index files."""
    from selfsup.registry.lifecycle import fingerprint, sha256_file

    cfg = load_config(REPO / "params.yaml", [f"retrieval.export.out_dir={tmp_path}"])
    files = EMBEDDER.export_files(cfg, EMBEDDER_TASK, tmp_path / "artifacts")
    assert {"model.onnx", "answers.npy", "answers.jsonl", "articles.npy"} <= set(files.identity)
    for name in files.identity:
        (tmp_path / name).write_text(name)
    before = fingerprint(tmp_path, files.identity)
    (tmp_path / "answers.jsonl").write_text("another knowledge base")
    assert fingerprint(tmp_path, files.identity) != before
    assert fingerprint(tmp_path, ("model.onnx",)) == sha256_file(tmp_path / "model.onnx")  # the classifiers' as before
