"""MLflow adapter: the only module that imports ``mlflow``. Runs, parent (pipeline) runs, and the registry."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient

from selfsup.config import TrackingConfig

_MAX_PARAM = 6000  # MLflow's limit on a param value (chars)


def _connect(cfg: TrackingConfig) -> str:
    """Point MLflow at the store (``MLFLOW_TRACKING_URI`` wins) and make sure the experiment exists with an
    artifact location under ``mlflow/`` (a SQLite store would otherwise write ./mlruns)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        location = cfg.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        return client.create_experiment(cfg.experiment, artifact_location=location)
    return experiment.experiment_id


class MlflowTracker:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self._client = MlflowClient()

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: (str(v)[:_MAX_PARAM]) for k, v in params.items()}
        existing = self._client.get_run(self.run_id).data.params
        mlflow.log_params({k: v for k, v in clean.items() if k not in existing}, run_id=self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))


def _pipeline_parent(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    """Find or create the parent run that groups every stage of one pipeline run."""
    key = tags["pipeline_key"]
    found = client.search_runs([experiment_id], filter_string=f"tags.pipeline_key = '{key}' and tags.stage = 'pipeline'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {key}", tags={**tags, "stage": "pipeline"})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextlib.contextmanager
def stage_run(cfg: TrackingConfig, name: str, tags: dict[str, str]) -> Iterator[MlflowTracker]:
    experiment_id = _connect(cfg)
    client = MlflowClient()
    parent = _pipeline_parent(client, experiment_id, tags)
    run = client.create_run(experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent})
    tracker = MlflowTracker(run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def register_onnx(cfg: TrackingConfig, run_id: str, onnx_path: Path, name: str, metrics: dict[str, float],
                  tags: dict[str, str], extra_files: list[Path]) -> int:
    """Log the ONNX model to ``run_id`` and register it as a new version of ``name``; returns the version."""
    import onnx

    _connect(cfg)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)), name="onnx_model", registered_model_name=name,
            pip_requirements=["onnxruntime==1.32.0", "onnx==1.23.2"],
            extra_files=[str(p) for p in extra_files] or None,
        )
    client = MlflowClient()
    version = int(info.registered_model_version)
    for key, value in {**{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}, **tags}.items():
        client.set_model_version_tag(name, str(version), key, str(value))
    return version
