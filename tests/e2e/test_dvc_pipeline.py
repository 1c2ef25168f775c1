"""The real `dvc repro` of the validate stage (and a stand-in downstream stage), in a temporary copy of the
repository with the real data. The whole pipeline runs end to end in test_text_pipeline.py."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import copy_repo, run_tool

pytestmark = pytest.mark.e2e


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run_tool(repo, "dvc", *args)


@pytest.fixture(scope="module")
def repo(built_data, tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    shutil.copytree(built_data, repo / "data")
    # a stand-in for the stages later issues add after validate: it must never run on data that failed validation
    with (repo / "dvc.yaml").open("a") as handle:
        handle.write(
            "  downstream:\n"
            "    cmd: python -c \"import shutil; shutil.copy('artifacts/validation/metrics.json', 'downstream.json')\"\n"
            "    deps: [artifacts/validation/metrics.json]\n"
            "    outs: [downstream.json]\n"
        )
    return repo


def test_dvc_repro_runs_validate_then_is_a_noop(repo):
    assert _dvc(repo, "status", "data.dvc").returncode == 0
    first = _dvc(repo, "repro", "downstream")
    assert first.returncode == 0, first.stderr + first.stdout
    assert "Running stage 'validate'" in first.stdout
    assert "data validation passed" in first.stdout
    metrics = json.loads((repo / "artifacts/validation/metrics.json").read_text())
    assert metrics["passed"] == 1 and metrics["rows"]["intent/train"] > 1000
    second = _dvc(repo, "repro", "downstream")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in _dvc(repo, "status", "validate", "downstream").stdout
    shown = _dvc(repo, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"passed": 1' in shown.stdout
    assert _dvc(repo, "params", "diff").returncode == 0


def test_changed_param_reruns_validate(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("      min_chars: 10\n", "      min_chars: 11\n", 1))
    changed = _dvc(repo, "repro", "downstream")
    assert changed.returncode == 0, changed.stderr
    assert "Running stage 'validate'" in changed.stdout
    diff = _dvc(repo, "params", "diff")
    assert "validate.tables.intent.min_chars" in diff.stdout


def test_broken_data_fails_the_stage_and_leaves_downstream_untouched(repo):
    assert _dvc(repo, "repro", "downstream").returncode == 0
    downstream_before = (repo / "downstream.json").read_bytes()
    lock_before = (repo / "dvc.lock").read_text()
    train = repo / "data/sentiment/train.csv"
    lines = train.read_text(encoding="utf-8").split("\n")
    lines[7] = lines[7].rsplit(",", 1)[0] + ",furious"
    train.write_text("\n".join(lines), encoding="utf-8")

    failed = _dvc(repo, "repro", "downstream")
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "data/sentiment/train.csv row 7: rule 'label_in_set' broken" in output
    assert "furious" in output
    assert (repo / "downstream.json").read_bytes() == downstream_before
    assert (repo / "dvc.lock").read_text() == lock_before
    results = json.loads((repo / "artifacts/validation/ge_results.json").read_text())
    assert any(not r["success"] for r in results)
