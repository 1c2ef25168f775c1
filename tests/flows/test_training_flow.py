"""The training flow end to end: a real Prefect flow run over the real `dvc repro` (tiny preset, temporary copy of
the repository), a real MLflow SQLite registry; gate pass, gate fail, idempotency, promotion, rollback, failure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_built, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
TASKS = ("intent", "sentiment", "topic")
MODELS = (*TASKS, "image-encoder", "embedder")  # the registry's tasks: text tasks, image encoder, sentence embedder
PERMISSIVE = {"metric": "macro_f1", "champion_tolerance": 1.0, "min_pretraining_gain": None,
              "tasks": {t: {"min_accuracy": 0.0, "min_macro_f1": 0.0} for t in TASKS},
              "image": {"metric": "knn_accuracy", "min_knn_accuracy": 0.0, "min_probe_accuracy": 0.0,
                        "min_pretraining_gain": None, "champion_tolerance": 1.0}}


def _edit_params(repo: Path, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in sections.items():
        node = params
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "params"], cwd=repo,
                   check=True)


def _versions(repo: Path, task: str) -> list[dict]:
    result = run_cli(["registry", "list", "--task", task, "--json"], repo)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory, monkeypatch_module) -> Path:
    """A copy of the project reproduced by `dvc repro` on the tiny preset (conftest's ``tiny_pipeline``: the
    ``register`` stage has added one ungated version of every model), with a gate every tiny model passes."""
    repo = copy_built(tiny_pipeline, tmp_path_factory.mktemp("flow") / "repo")
    _edit_params(repo, gate=PERMISSIVE)
    return repo


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def first_run(repo):
    from flows.training import training

    return training(repo=str(repo), pull_data=False)


def test_first_run_gates_and_crowns_what_register_added(first_run, repo):
    # the gate is no stage's dependency: the reproduced stages are up to date (the flow running stages that changed
    # is test_gate_failure_promotion_refusal_and_rollback's)
    assert first_run["stages_run"] == []
    assert {g["task"] for g in first_run["gated"]} == set(MODELS)
    for g in first_run["gated"]:
        assert g["passed"] and set(g["aliases"]) == {"challenger", "champion"}, g
    for task in MODELS:
        (row,) = _versions(repo, task)
        assert row["gate"] == "passed" and set(row["aliases"]) == {"challenger", "champion"}
    # no stage ran for this commit (the gate's change is one), so no pipeline run in MLflow to link to
    assert first_run["mlflow_run"] is None


def test_second_run_trains_nothing_and_registers_nothing(first_run, repo):
    from flows.training import training

    again = training(repo=str(repo), pull_data=False)
    assert again["stages_run"] == [] and again["gated"] == []
    assert [len(_versions(repo, t)) for t in MODELS] == [1] * len(MODELS)


def _set_version_tag(repo: Path, task: str, version: int, key: str, value: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow/mlflow.db'}")
    client.set_model_version_tag(f"selfsup-{task}", str(version), key, value)


def _aliases(repo: Path, task: str) -> dict[int, list[str]]:
    return {r["version"]: r["aliases"] for r in _versions(repo, task)}


def test_gate_failure_promotion_refusal_and_rollback(first_run, repo):
    from flows.training import training

    # The champion's recorded score is what a new version must strictly beat (gate.metric: test macro-F1). Record
    # the maximum, 1.0, on the champion v1, so that no retrained tiny model can beat it: the next version passes the
    # (permissive) gate and must become challenger only, whatever it scores.
    assert _aliases(repo, "intent") == {1: ["challenger", "champion"]}
    _set_version_tag(repo, "intent", 1, "metric.test_macro_f1", "1.0")

    # a second intent model that passes without beating the champion: challenger only; then promote / roll back
    _edit_params(repo, finetune__tasks__intent__learning_rate=0.002)
    second = training(repo=str(repo), pull_data=False)
    # label_efficiency reads every task's fine-tuning settings and evaluation: it reruns too
    assert set(second["stages_run"]) == {"finetune@intent", "evaluate@intent", "export@intent", "label_efficiency",
                                         "register"}
    assert second["mlflow_run"] and "/#/experiments/" in second["mlflow_run"]  # the stages' pipeline run
    (decision,) = second["gated"]
    assert decision["version"] == 2 and decision["passed"] and decision["aliases"] == ["challenger"], decision
    assert _aliases(repo, "intent") == {1: ["champion"], 2: ["challenger"]}
    promoted = run_cli(["registry", "promote", "intent", "2"], repo)
    assert promoted.returncode == 0, promoted.stderr
    assert _aliases(repo, "intent") == {1: [], 2: ["challenger", "champion"]}
    back = run_cli(["registry", "rollback", "intent"], repo)
    assert back.returncode == 0 and "from v2 to v1" in back.stdout, back.stdout + back.stderr
    assert _aliases(repo, "intent") == {1: ["champion"], 2: ["challenger"]}

    # a third that fails a strict gate: tagged with the reason, no alias, cannot be promoted
    strict = json.loads(json.dumps(PERMISSIVE))
    strict["tasks"]["intent"]["min_accuracy"] = 0.99
    _edit_params(repo, finetune__tasks__intent__learning_rate=0.003, gate=strict)
    third = training(repo=str(repo), pull_data=False)
    (decision,) = third["gated"]
    assert decision["version"] == 3 and not decision["passed"] and decision["aliases"] == []
    assert "min_accuracy" in decision["reason"]
    row = {r["version"]: r for r in _versions(repo, "intent")}[3]
    assert row["gate"] == "failed" and row["aliases"] == [] and "min_accuracy" in row["gate_reason"]
    refused = run_cli(["registry", "promote", "intent", "3"], repo)
    assert refused.returncode == 1 and "did not pass the quality gate" in refused.stderr


def test_a_failing_stage_fails_the_flow_and_leaves_the_registry_untouched(first_run, repo):
    from flows.training import StageFailed, training

    before = {t: _versions(repo, t) for t in MODELS}
    _edit_params(repo, export__max_abs_logit_diff=1e-15)  # no export can meet this: every export stage fails
    with pytest.raises(StageFailed, match="ONNX parity check failed"):
        training(repo=str(repo), pull_data=False)
    assert {t: _versions(repo, t) for t in MODELS} == before
