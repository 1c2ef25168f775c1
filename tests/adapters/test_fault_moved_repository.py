"""A moved or copied repository uses its own MLflow store: MLflow keeps absolute artifact paths in the SQLite store,
and without the adapter's rewrite a copy would log into, and read its models from, the original's folder."""

import hashlib
import shutil
import sqlite3
from pathlib import Path

from conftest import identity_onnx

from selfsup.config import TrackingConfig

MODEL = "selfsup-relocated"
TAGS = {"pipeline_key": "relocate", "stage": "test"}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _stored_paths(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [row[0] for query in ("SELECT artifact_location FROM experiments", "SELECT artifact_uri FROM runs",
                                     "SELECT storage_location FROM model_versions")
                for row in con.execute(query)]


def _log_and_register(cfg: TrackingConfig, note: Path, onnx_file: Path, fingerprint: str) -> str:
    from selfsup.adapters.mlflow import register_onnx, stage_run

    with stage_run(cfg, "stage", TAGS) as tracker:
        tracker.log_artifact(note)
        tracker.log_metrics({"loss": 1.0}, step=1)
    register_onnx(cfg, tracker.run_id, onnx_file, MODEL, {"f1": 0.5}, {}, [], fingerprint)
    return tracker.run_id


def test_a_copied_repository_writes_and_reads_only_its_own_store(tmp_path, monkeypatch, capsys):
    from selfsup.adapters.mlflow import download_version, model_versions

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="relocate-test")  # the defaults: sqlite:///mlflow/mlflow.db, mlflow/artifacts
    onnx_file = identity_onnx(tmp_path / "model.onnx")
    note = tmp_path / "note.txt"
    note.write_text("logged in the original")
    original = tmp_path / "original"
    original.mkdir()
    monkeypatch.chdir(original)
    _log_and_register(cfg, note, onnx_file, "sha-original")
    assert all(str(original) in path for path in _stored_paths(original / "mlflow/mlflow.db"))

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = _tree(original)
    # the original moves away: anything the copy still resolved there would fail or recreate the folder
    parked = shutil.move(original, tmp_path / "parked")
    monkeypatch.chdir(copy)
    assert [v["version"] for v in model_versions(cfg, MODEL)] == [1]
    assert "now in" in capsys.readouterr().err  # said once, when the store is rewritten
    download_version(cfg, MODEL, 1, copy / "downloaded")  # read from the copy's artifacts
    assert (copy / "downloaded/model.onnx").read_bytes() == onnx_file.read_bytes()
    note.write_text("logged in the copy")
    _log_and_register(cfg, note, onnx_file, "sha-copy")
    assert [v["version"] for v in model_versions(cfg, MODEL)] == [1, 2]
    assert not original.exists(), "the copy wrote into the original's folder"
    assert all(str(copy) in path and str(original) not in path for path in _stored_paths(copy / "mlflow/mlflow.db"))
    assert "now in" not in capsys.readouterr().err  # a store already in place is left alone
    assert _tree(Path(parked)) == before


def test_a_store_outside_the_working_directory_is_never_rewritten(tmp_path, monkeypatch):
    """``MLFLOW_TRACKING_URI`` naming another project's database: the other project keeps its paths."""
    from selfsup.adapters.mlflow import model_versions

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="relocate-test")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    note = tmp_path / "note.txt"
    note.write_text("x")
    _log_and_register(cfg, note, identity_onnx(tmp_path / "model.onnx"), "sha-other")
    stored = _stored_paths(other / "mlflow/mlflow.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other / 'mlflow/mlflow.db'}")
    assert [v["version"] for v in model_versions(cfg, MODEL)] == [1]
    assert _stored_paths(other / "mlflow/mlflow.db") == stored
