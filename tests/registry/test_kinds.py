"""The ModelKind table: each registry task maps to one kind, and the by-hand registry commands refuse cleanly on a
registry that holds nothing yet (a real, empty MLflow SQLite store)."""

from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.config import IMAGE_TASK, load_config
from selfsup.registry.kinds import IMAGE, TEXT, RegistryError, kind_of, model_name, registry_tasks

REPO = Path(__file__).resolve().parents[2]


def test_every_registry_task_has_its_kind_and_name():
    cfg = load_config(REPO / "params.yaml")
    assert registry_tasks(cfg) == [*cfg.data.tasks, IMAGE_TASK]
    assert {task: kind_of(cfg, task) for task in cfg.data.tasks} == {task: TEXT for task in cfg.data.tasks}
    assert kind_of(cfg, IMAGE_TASK) is IMAGE
    assert model_name(cfg, "intent") == f"{cfg.export.registered_model_prefix}-intent"
    assert model_name(cfg, IMAGE_TASK) == cfg.vision.export.registered_model
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
