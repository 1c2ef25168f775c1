"""The image encoder in the model registry: a real (tiny) exported ONNX model registered by the `register` code
path in a real MLflow SQLite store, gated, promoted, rolled back and fetched, with the `selfsup registry` CLI."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGE_CLASSES as CLASSES, export_tiny_image_model
from selfsup.cli import main
from selfsup.config import IMAGE_TASK, load_config
from selfsup.registry.lifecycle import (RegistryError, fetch_model, gate_versions, list_versions, promote, register_exports,
                              rollback)
from selfsup.tracking import open_run

REPO = Path(__file__).resolve().parents[2]


def _export(folder: Path, seed: int) -> dict:
    """A tiny encoder + probe, exported by the real export_ssl code; a different seed gives a different model."""
    return export_tiny_image_model(folder / "onnx", seed)


def _write_reports(folder: Path, exported: dict, knn: float, method: str = "simclr") -> None:
    """The three stage reports the register stage reads, in the format pretrain_ssl / evaluate_ssl / export_ssl
    write them."""
    shares = {"0.01": knn - 0.08, "0.1": knn - 0.01, "1": knn + 0.02}
    reports = {
        "pretrain_ssl": {"method": method, "embedding_std": 0.43, "effective_rank": 30.1, "collapsed": 0},
        "evaluate_ssl": {"method": method, "ssl": {"knn_accuracy": knn, "probe_accuracy": shares},
                         "random_init": {"knn_accuracy": 0.746, "probe_accuracy": {k: 0.6 for k in shares}},
                         "raw_pixels": {"knn_accuracy": knn - 0.01, "probe_accuracy": {k: 0.6 for k in shares}},
                         "supervised_from_scratch": {"accuracy": {k: 0.64 for k in shares}}},
        "artifacts/export_ssl": exported,
    }
    for name, report in reports.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "metrics.json").write_text(json.dumps(report))


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # git commit / data hash of the register runs: "unknown" / "untracked" here
    overrides = [f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
                 f"vision.export.out_dir={tmp_path / 'onnx'}",
                 f"vision.pretrain.metrics_dir={tmp_path / 'pretrain_ssl'}",
                 f"vision.evaluate.out_dir={tmp_path / 'evaluate_ssl'}"]
    cfg = load_config(REPO / "params.yaml", overrides)
    return tmp_path, cfg, overrides


def _register(cfg, tmp_path: Path, tasks=(IMAGE_TASK,)):
    factory = partial(open_run, cfg, "register", REPO / "params.yaml", None)
    return register_exports(cfg, list(tasks), factory, "test-commit", artifacts=tmp_path / "artifacts")


def _aliases(cfg) -> dict[int, list[str]]:
    return {row["version"]: row["aliases"] for row in list_versions(cfg, IMAGE_TASK)}


@pytest.mark.slow  # three ONNX exports and a real MLflow registry: 10 s idle, 35 s on a busy machine
def test_register_gate_promote_rollback_fetch(project, capsys):
    tmp_path, cfg, overrides = project
    good = _export(tmp_path, seed=0)
    _write_reports(tmp_path, good, knn=0.775)

    # a pipeline whose text exports are missing registers nothing at all, not even the finished image encoder
    with pytest.raises(RegistryError, match="cannot register: missing .*models/onnx/intent/model.onnx"):
        _register(cfg, tmp_path, tasks=("intent", IMAGE_TASK))
    assert list_versions(cfg, IMAGE_TASK) == []

    (first,) = _register(cfg, tmp_path)
    assert (first.name, first.version, first.new) == ("selfsup-image-encoder", 1, True)
    assert _register(cfg, tmp_path)[0].new is False  # the same ONNX (SHA-256) is not registered twice
    (row,) = list_versions(cfg, IMAGE_TASK)
    assert row["tags"]["modality"] == "image" and row["tags"]["method"] == "simclr"
    assert row["tags"]["task"] == IMAGE_TASK and row["tags"]["git_commit"] == "test-commit"
    metrics = {k.removeprefix("metric."): float(v) for k, v in row["tags"].items() if k.startswith("metric.")}
    assert metrics["knn_accuracy"] == 0.775 and metrics["probe_accuracy"] == pytest.approx(0.795)
    assert metrics["random_init_knn_accuracy"] == 0.746 and metrics["probe_accuracy_0.01"] == pytest.approx(0.695)
    assert metrics["embedding_std"] == 0.43 and metrics["onnx_label_agreement"] == 1.0
    assert metrics["raw_pixels_knn_accuracy"] == pytest.approx(0.765)  # the classical arm, for the gate's check

    (decision,) = gate_versions(cfg, IMAGE_TASK)
    assert decision.verdict.passed and decision.aliases == ["challenger", "champion"]
    assert gate_versions(cfg, IMAGE_TASK) == []  # a verdict is given once

    # a worse encoder: below gate.image.min_knn_accuracy and no better than random init -> failed, no alias
    _write_reports(tmp_path, _export(tmp_path, seed=1), knn=0.6)
    assert _register(cfg, tmp_path)[0].version == 2
    (decision,) = gate_versions(cfg, IMAGE_TASK)
    assert not decision.verdict.passed and decision.aliases == []
    row = {r["version"]: r for r in list_versions(cfg, IMAGE_TASK)}[2]
    assert row["tags"]["gate"] == "failed" and row["aliases"] == []
    assert "kNN accuracy 0.6000 < gate.image.min_knn_accuracy 0.7000" in row["tags"]["gate_reason"]
    assert "not > gate.image.min_pretraining_gain" in row["tags"]["gate_reason"]
    with pytest.raises(RegistryError, match="v2 did not pass the quality gate"):
        promote(cfg, IMAGE_TASK, 2)

    # a better one takes over; rollback returns to the first champion
    _write_reports(tmp_path, _export(tmp_path, seed=2), knn=0.79)
    _register(cfg, tmp_path)
    (decision,) = gate_versions(cfg, IMAGE_TASK)
    assert decision.version == 3 and decision.aliases == ["challenger", "champion"] and decision.previous_champion == 1
    assert _aliases(cfg) == {1: [], 2: [], 3: ["challenger", "champion"]}
    assert rollback(cfg, IMAGE_TASK) == (3, 1)
    assert _aliases(cfg)[1] == ["champion"]

    version, folder = fetch_model(cfg, IMAGE_TASK, "champion", tmp_path / "served")
    assert version == 1 and json.loads((folder / "classes.json").read_text()) == CLASSES
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    _, logits = session.run(None, {"images": np.zeros((2, 1, 28, 28), dtype=np.uint8)})
    assert logits.shape == (2, len(CLASSES))

    # the CLI shows image columns, and names the known tasks when given an unknown one
    params = ["--params", str(REPO / "params.yaml")]
    assert main([*params, "registry", "list", "--task", IMAGE_TASK, *overrides]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[4:9] == ["kNN", "probe", "rnd.kNN", "pix.kNN", "gate"] and len(lines) == 3
    assert "0.600" in lines[1] and "kNN accuracy 0.6000 < gate.image.min_knn_accuracy" in lines[1]
    assert main([*params, "registry", "promote", IMAGE_TASK, "2", *overrides]) == 1
    assert "did not pass the quality gate" in capsys.readouterr().err
    assert main([*params, "registry", "list", "--task", "images", *overrides]) == 2
    assert "'image-encoder'" in capsys.readouterr().err


def test_reports_of_two_different_encoders_are_refused(project):
    tmp_path, cfg, _ = project
    _write_reports(tmp_path, {"label_agreement": 1.0, "max_abs_diff": 0.0}, knn=0.775)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx/model.onnx").write_bytes(b"never read")
    evaluation = json.loads((tmp_path / "evaluate_ssl/metrics.json").read_text())
    (tmp_path / "evaluate_ssl/metrics.json").write_text(json.dumps({**evaluation, "method": "byol"}))
    with pytest.raises(RegistryError, match="disagree on the method"):
        _register(cfg, tmp_path)
    assert list_versions(cfg, IMAGE_TASK) == []
