"""The registry adapter: "no such model" is an empty registry, a failing store is an error. Reading an empty answer
from a store that failed would skip the SHA-256 duplicate check and register the same model twice."""

import shutil
import sqlite3

import pytest

from conftest import identity_onnx

from selfsup.config import TrackingConfig

MODEL = "selfsup-intent"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """An MLflow SQLite database with its schema created (the migrations take 10-15 s on a busy machine), copied
    by each test so that every test damages only its own store."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_registered_models()
    return db


@pytest.fixture
def cfg(tmp_path, monkeypatch, empty_db) -> TrackingConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"),
                          experiment="registry-test")


@pytest.fixture
def onnx_file(tmp_path):
    return identity_onnx(tmp_path / "model.onnx")


def _register(cfg, onnx_file, fingerprint="sha-1", extra_files=()):
    from selfsup.adapters.mlflow import register_onnx, standalone_run

    with standalone_run(cfg, cfg.experiment, "register", {}) as tracker:
        pass
    return register_onnx(cfg, tracker.run_id, onnx_file, MODEL, {"f1": 0.9}, {}, list(extra_files), fingerprint)


def _damage(db: str, table: str = "model_version_tags") -> None:
    """A store that fails on reading versions (a table gone, as after an interrupted migration): MLflow raises the
    same MlflowException (TEMPORARILY_UNAVAILABLE, from sqlite3.OperationalError) as for a locked database, without
    waiting out MLflow's 20-second SQLite busy timeout."""
    with sqlite3.connect(db) as con:
        con.execute(f"ALTER TABLE {table} RENAME TO {table}_damaged")


def _count(db: str, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_model_never_registered_has_no_versions(cfg):
    from selfsup.adapters.mlflow import alias_version, model_versions

    assert model_versions(cfg, MODEL) == []
    assert alias_version(cfg, MODEL, "champion") is None


def test_the_same_onnx_file_is_registered_once(cfg, onnx_file):
    from selfsup.adapters.mlflow import alias_version, model_versions, set_alias

    assert _register(cfg, onnx_file) == (1, True)
    assert _register(cfg, onnx_file) == (1, False)
    assert _register(cfg, onnx_file, fingerprint="sha-2") == (2, True)
    assert [row["version"] for row in model_versions(cfg, MODEL)] == [1, 2]
    assert alias_version(cfg, MODEL, "champion") is None  # the model exists, the alias does not
    set_alias(cfg, MODEL, "champion", 2)
    assert alias_version(cfg, MODEL, "champion") == 2


def test_a_failing_store_does_not_register_a_duplicate(cfg, onnx_file):
    from selfsup.errors import TrackingUnavailable

    db = cfg.tracking_uri.removeprefix("sqlite:///")
    assert _register(cfg, onnx_file) == (1, True)
    logged = _count(db, "logged_models")
    _damage(db)
    with pytest.raises(TrackingUnavailable, match=f"failed while registering {MODEL}.*model_version_tags"):
        _register(cfg, onnx_file)
    # the duplicate check failed, so nothing was logged or registered after it
    assert _count(db, "logged_models") == logged and _count(db, "model_versions") == 1


def test_a_failing_store_is_not_an_empty_registry(cfg, onnx_file):
    from mlflow.exceptions import MlflowException

    from selfsup.adapters.mlflow import alias_version, model_versions

    _register(cfg, onnx_file)
    _damage(cfg.tracking_uri.removeprefix("sqlite:///"))
    with pytest.raises(MlflowException, match="model_version_tags"):
        model_versions(cfg, MODEL)
    _damage(cfg.tracking_uri.removeprefix("sqlite:///"), "registered_model_aliases")
    with pytest.raises(MlflowException, match="registered_model_aliases"):
        alias_version(cfg, MODEL, "champion")


def test_registering_a_text_model_leaves_no_download_bar_in_a_log(cfg, tiny_onnx_classifier, capsys):
    """Logging the pyfunc reads the model back from the artifact store; in a stage's log (not a terminal) MLflow's
    "Downloading artifacts" bar would be left once per file and model."""
    from selfsup.adapters.mlflow import TEXT_MODEL_FILES

    extra = [tiny_onnx_classifier / name for name in TEXT_MODEL_FILES]
    assert _register(cfg, tiny_onnx_classifier / "model.onnx", extra_files=extra) == (1, True)
    assert "Downloading artifacts" not in capsys.readouterr().err
