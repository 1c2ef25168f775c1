"""The image pipeline with the real `dvc repro`, a real MLflow store and onnxruntime, on the tiny preset, in a
temporary copy of the repository: validate_images -> pretrain_ssl -> evaluate_ssl -> export_ssl. Registration is
the `register` stage's, after the text exports too: tests/e2e/test_text_pipeline.py runs the whole pipeline."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import copy_repo, run_tool, use_preset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STAGES = {"validate_images", "pretrain_ssl", "evaluate_ssl", "export_ssl"}


def _ran(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(built_data, tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("image_pipeline") / "repo")
    shutil.copytree(built_data, repo / "data")
    use_preset(repo, "tiny")
    result = run_tool(repo, "dvc", "repro", "export_ssl")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert _ran(result) == STAGES
    return repo


def test_every_image_stage_produced_its_outputs(repo):
    assert json.loads((repo / "artifacts/validation_images/metrics.json").read_text())["passed"] == 1
    pretrain = json.loads((repo / "artifacts/pretrain_ssl/metrics.json").read_text())
    assert pretrain["method"] == "simclr" and pretrain["steps"] == 4 and pretrain["collapsed"] == 0
    assert (repo / "models/ssl/encoder.pt").exists() and (repo / "artifacts/pretrain_ssl/curves.png").exists()
    evaluation = json.loads((repo / "artifacts/evaluate_ssl/metrics.json").read_text())
    for encoder in ("ssl", "random_init", "raw_pixels"):
        assert 0.0 <= evaluation[encoder]["knn_accuracy"] <= 1.0
        assert set(evaluation[encoder]["probe_accuracy"]) == {"0.01", "0.1", "1"}
    assert evaluation["knn_gain_over_raw_pixels"] == pytest.approx(
        evaluation["ssl"]["knn_accuracy"] - evaluation["raw_pixels"]["knn_accuracy"], abs=1e-12)
    assert set(evaluation["supervised_from_scratch"]["accuracy"]) == {"0.01", "0.1", "1"}
    assert (repo / "artifacts/evaluate_ssl/tsne.png").stat().st_size > 10_000
    assert (repo / "artifacts/evaluate_ssl/label_efficiency.png").exists()
    exported = json.loads((repo / "artifacts/export_ssl/metrics.json").read_text())
    assert exported["label_agreement"] >= 0.999 and exported["max_abs_diff"] < 1e-3
    assert not (repo / "mlruns").exists()


def test_export_ssl_registers_nothing_and_register_waits_for_every_export(repo):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("selfsup").experiment_id])
    pretrain = next(r for r in runs if r.data.tags["stage"] == "pretrain_ssl")
    assert len(client.get_metric_history(pretrain.info.run_id, "train_loss")) == 4
    assert len(client.get_metric_history(pretrain.info.run_id, "effective_rank")) == 2
    exported = next(r for r in runs if r.data.tags["stage"] == "export_ssl")
    assert exported.data.metrics["onnx_label_agreement"] >= 0.999
    # registration is the register stage's, after the text exports too (tests/e2e/test_text_pipeline.py runs it)
    assert client.search_model_versions("name='selfsup-image-encoder'") == []
    refused = run_tool(repo, "selfsup", "register")
    assert refused.returncode == 1 and "cannot register: missing" in refused.stderr, refused.stderr
    assert client.search_model_versions("name='selfsup-image-encoder'") == []


def test_second_repro_is_a_noop(repo):
    again = run_tool(repo, "dvc", "repro", "export_ssl")
    assert again.returncode == 0 and _ran(again) == set()


def test_another_method_is_one_exp_run_away(repo):
    result = run_tool(repo, "dvc", "exp", "run", "export_ssl", "-S", "vision.pretrain.method=byol")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _ran(result) == {"pretrain_ssl", "evaluate_ssl", "export_ssl"}
    assert json.loads((repo / "artifacts/pretrain_ssl/metrics.json").read_text())["method"] == "byol"
