"""The whole pipeline (text stages, image stages, register) with the real `dvc repro`, a real MLflow store and
real onnxruntime, on the tiny preset, in a temporary copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_repo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TASKS = ("intent", "sentiment", "topic")
BIN = Path(sys.executable).parent


def _run(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=repo, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def repo(built_data, tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    shutil.copytree(built_data, repo / "data")
    params = repo / "params.yaml"
    text = params.read_text()
    assert '\npreset: ""\n' in text
    params.write_text(text.replace('\npreset: ""\n', "\npreset: tiny\n"))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "tiny preset"], cwd=repo,
                   check=True)
    result = _run(repo, "dvc", "repro")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return repo


def _registry(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow/mlflow.db'}")
    return mlflow.MlflowClient()


def test_every_stage_produced_its_outputs(repo):
    assert (repo / "models/tokenizer/tokenizer.json").exists()
    assert (repo / "models/mlm/model.safetensors").exists()
    pretrain = json.loads((repo / "artifacts/pretrain/metrics.json").read_text())
    assert pretrain["steps"] == 6 and pretrain["val_perplexity"] > 1
    for task in TASKS:
        evaluation = json.loads((repo / f"artifacts/evaluate/{task}/metrics.json").read_text())
        for init in ("pretrained", "scratch"):
            assert 0.0 <= evaluation[init]["accuracy"] <= 1.0 and 0.0 <= evaluation[init]["macro_f1"] <= 1.0
        assert (repo / f"artifacts/evaluate/{task}/confusion.png").stat().st_size > 10_000
        assert (repo / f"artifacts/evaluate/{task}/loss_curves.png").exists()
        exported = json.loads((repo / f"artifacts/export/{task}/metrics.json").read_text())
        assert exported["label_agreement"] >= 0.999 and exported["max_abs_logit_diff"] < 1e-3
        assert {p.name for p in (repo / f"models/onnx/{task}").iterdir()} == {
            "model.onnx", "tokenizer.json", "labels.json", "export.json"}
    assert not (repo / "mlruns").exists(), "MLflow must write under mlflow/, not ./mlruns"


def test_dvc_metrics_and_plots_are_readable(repo):
    shown = _run(repo, "dvc", "metrics", "show", "--json")
    assert shown.returncode == 0 and "pretraining_gain" in shown.stdout
    status = _run(repo, "dvc", "status")
    assert "Data and pipelines are up to date" in status.stdout


def test_mlflow_has_runs_tags_curves_and_registered_onnx_models(repo):
    client = _registry(repo)
    experiment = client.get_experiment_by_name("selfsup")
    runs = client.search_runs([experiment.experiment_id])
    stages = {r.data.tags["stage"] for r in runs}
    assert {"pipeline", "tokenizer", "pretrain_mlm", "finetune", "evaluate", "export", "register"} <= stages
    pretrain = next(r for r in runs if r.data.tags["stage"] == "pretrain_mlm")
    assert pretrain.data.tags["dvc_data_hash"].endswith(".dir")
    assert len(pretrain.data.tags["git_commit"]) >= 40
    assert pretrain.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in runs if r.data.tags["stage"] == "pipeline"}
    assert pretrain.data.params["model.hidden_size"] == "32"
    assert len(client.get_metric_history(pretrain.info.run_id, "train_loss")) == 6
    for task in TASKS:
        versions = client.search_model_versions(f"name='selfsup-{task}'")
        assert len(versions) == 1
        assert float(versions[0].tags["metric.test_accuracy"]) >= 0.0
        assert float(versions[0].tags["metric.onnx_label_agreement"]) >= 0.999
        assert len(versions[0].tags["onnx_sha256"]) == 64 and "gate" not in versions[0].tags  # gating: the flow
    import mlflow.onnx

    registered = mlflow.onnx.load_model("models:/selfsup-intent/1")
    assert [i.name for i in registered.graph.input] == ["input_ids", "attention_mask"]
    evaluate = next(r for r in runs if r.data.tags["stage"] == "evaluate" and r.data.tags["task"] == "intent")
    assert {a.path for a in client.list_artifacts(evaluate.info.run_id)} >= {
        "confusion.png", "loss_curves.png", "metrics.json"}


def test_register_stage_registers_the_image_encoder_too(repo):
    client = _registry(repo)
    (version,) = client.search_model_versions("name='selfsup-image-encoder'")
    tags = version.tags
    assert tags["modality"] == "image" and tags["method"] == "simclr" and tags["task"] == "image-encoder"
    evaluation = json.loads((repo / "artifacts/evaluate_ssl/metrics.json").read_text())
    assert float(tags["metric.knn_accuracy"]) == pytest.approx(evaluation["ssl"]["knn_accuracy"], abs=1e-5)
    assert float(tags["metric.probe_accuracy"]) == pytest.approx(evaluation["ssl"]["probe_accuracy"]["1"], abs=1e-5)
    for name in ("random_init_knn_accuracy", "embedding_std", "effective_rank", "onnx_max_abs_diff"):
        assert f"metric.{name}" in tags
    assert float(tags["metric.onnx_label_agreement"]) >= 0.999 and "gate" not in tags  # gating: the flow
    registered = json.loads((repo / "artifacts/register/registered.json").read_text())
    assert {v["task"] for v in registered["versions"]} == {*TASKS, "image-encoder"}
    import mlflow.onnx

    model = mlflow.onnx.load_model("models:/selfsup-image-encoder/1")
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["embedding", "logits"]


def test_predict_serves_the_exported_model(repo):
    result = _run(repo, "selfsup", "predict", "--model", "models/onnx/intent", "my bag did not arrive in Boston")
    assert result.returncode == 0, result.stderr
    label = result.stdout.split("\t")[0]
    assert label in json.loads((repo / "models/onnx/intent/labels.json").read_text())


def test_second_repro_is_a_noop_and_registers_nothing(repo):
    again = _run(repo, "dvc", "repro")
    assert again.returncode == 0
    assert "Running stage" not in again.stdout
    assert len(_registry(repo).search_model_versions("name='selfsup-intent'")) == 1


def test_changing_one_task_reruns_only_that_task(repo):
    params = repo / "params.yaml"
    text = params.read_text()
    marker = "    intent:\n      epochs: 10\n      batch_size: 32\n"
    assert marker in text
    params.write_text(text.replace(marker, "    intent:\n      epochs: 10\n      batch_size: 16\n"))
    result = _run(repo, "dvc", "repro")
    assert result.returncode == 0, result.stderr[-3000:]
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"finetune@intent", "evaluate@intent", "export@intent", "register"}
    client = _registry(repo)
    assert len(client.search_model_versions("name='selfsup-intent'")) == 2
    assert len(client.search_model_versions("name='selfsup-sentiment'")) == 1
