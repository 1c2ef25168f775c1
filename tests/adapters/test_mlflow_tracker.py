"""The MLflow tracker buffers step metrics; every value must reach the store when the run ends, FINISHED or FAILED."""

import pytest

from selfsup.config import TrackingConfig


def _store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "art"),
                          experiment="tracker-test")


def test_buffered_metrics_all_reach_the_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from selfsup.adapters.mlflow import MlflowTracker, standalone_run

    cfg = _store(tmp_path, monkeypatch)
    steps = MlflowTracker.FLUSH_EVERY + 123  # crosses one automatic flush, leaves a remainder for the end
    with standalone_run(cfg, "tracker-test", "ok", {}) as tracker:
        for step in range(steps):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracker.log_metrics({"final": 0.5})
    client = MlflowClient()
    history = client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(steps))
    assert {m.step: m.value for m in history}[9] == pytest.approx(0.1)
    run = client.get_run(tracker.run_id)
    assert run.data.metrics["final"] == 0.5 and run.info.status == "FINISHED"


def test_a_failed_run_keeps_its_curves(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from selfsup.adapters.mlflow import standalone_run

    cfg = _store(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="diverged"):
        with standalone_run(cfg, "tracker-test", "fails", {}) as tracker:
            for step in range(7):
                tracker.log_metrics({"loss": float(step)}, step=step)
            raise RuntimeError("diverged")
    client = MlflowClient()
    assert len(client.get_metric_history(tracker.run_id, "loss")) == 7
    assert client.get_run(tracker.run_id).info.status == "FAILED"
