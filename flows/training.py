"""The training flow: data → ``dvc repro`` stage by stage → quality gate → registry aliases.

    python -m flows.training [--repo .] [--no-pull]

Parameters come from the project's ``params.yaml`` only (the file DVC tracks); to try other values use
``dvc exp run -S key=value`` or edit the file, so the registered models always match a versioned configuration.

One Prefect task per ``dvc.yaml`` stage, in the order DVC resolves (``dvc.yaml`` stays the only pipeline
definition; DVC decides what is up to date, so a second run with nothing changed trains nothing). Then every
version the ``register`` stage added (text models and the image encoder) is judged by the gate (``params.yaml``
``gate``; ``gate.image`` for the image encoder): passing versions get the alias ``challenger``, and ``champion``
when they beat the current one; failing ones keep their reasons as tags and get no alias. A failing stage fails
the flow with the stage's own error output, before anything is gated.

Retries: only the I/O tasks (fetching data from the DVC remote / the pinned packages, MLflow registry calls), with
exponential backoff. Training stages are never retried: they fail the same way twice.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.common import in_project, retry_on_io


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the end of its output."""


class TransientStageError(StageFailed, OSError):
    """The command said its failure was I/O (it exited with ``selfsup.cli.EXIT_IO``): an ``OSError``, so the
    tasks with ``retry_condition_fn=retry_on_io`` retry it."""


@task(name="materialize data", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_condition_fn=retry_on_io)
def materialize_data(root: Path) -> str:
    """``data/`` as ``data.dvc`` records it: already there, else ``dvc pull``, else rebuilt from pinned packages."""
    from selfsup.cli import EXIT_IO

    return _run(["selfsup", "data", "materialize"], root, "data materialize", transient_exit=EXIT_IO)


@task(name="pipeline stages")
def pipeline_stages(root: Path) -> list[str]:
    from selfsup.adapters.dvc import pipeline_stages as stages

    return stages(root)


@task(task_run_name="dvc repro {stage}")
def run_stage(root: Path, stage: str) -> bool:
    """``dvc repro --single-item STAGE``; True when DVC ran it, False when it was up to date."""
    output = _run(["dvc", "repro", "--single-item", stage], root, stage)
    return "didn't change, skipping" not in output


def _run(cmd: list[str], root: Path, label: str, transient_exit: int | None = None) -> str:
    """Run ``cmd`` streaming its output into the task's log; raise StageFailed with the last lines on failure
    (TransientStageError when it exits with ``transient_exit``, the code by which ``cmd`` reports an I/O failure)."""
    logger = get_run_logger()
    tail: deque[str] = deque(maxlen=40)
    lines = []
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if "\r" in line:  # progress bars: keep the last state only
                line = line.rsplit("\r", 1)[-1]
            tail.append(line)
            lines.append(line)
            logger.info(line)
    if proc.returncode != 0:
        error = TransientStageError if proc.returncode == transient_exit else StageFailed
        raise error(f"{label} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return "\n".join(lines)


@task(name="quality gate and promotion", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_condition_fn=retry_on_io)
def gate_and_promote(params: str, context: dict[str, str]) -> list[dict]:
    from selfsup.config import load_config
    from selfsup.registry.kinds import registry_tasks
    from selfsup.registry.lifecycle import gate_versions

    logger = get_run_logger()
    cfg = load_config(params)
    if not cfg.tracking.enabled:
        logger.warning("tracking.enabled is false: nothing registered, nothing to gate")
        return []
    rows = []
    for task_name in registry_tasks(cfg):  # the text tasks, then the image encoder
        for decision in gate_versions(cfg, task_name, context):
            rows.append({"task": task_name, "model": decision.name, "version": decision.version,
                         "passed": decision.verdict.passed, "reason": decision.verdict.summary,
                         "aliases": decision.aliases, "previous_champion": decision.previous_champion})
            log = logger.info if decision.verdict.passed else logger.warning
            log("%s v%s: gate %s — %s%s", decision.name, decision.version,
                "PASSED" if decision.verdict.passed else "FAILED", decision.verdict.summary,
                f"; aliases set: {', '.join(decision.aliases)}" if decision.aliases else "; no alias")
    return rows


@task(name="link the MLflow run")
def link_mlflow(params: str, root: Path, gated: list[dict], ran: dict[str, bool]) -> str | None:
    from selfsup.adapters.mlflow import pipeline_run_url
    from selfsup.config import load_config
    from selfsup.tracking import pipeline_key

    cfg = load_config(params)
    url = pipeline_run_url(cfg.tracking, pipeline_key(Path(params), root), cfg.orchestration.mlflow_ui_url) \
        if cfg.tracking.enabled else None
    if url:
        create_link_artifact(key="mlflow-pipeline-run", link=url, link_text="MLflow pipeline run",
                             description="the MLflow run of this pipeline (params, curves, metrics, models)")
    table = "\n".join(f"| {g['model']} | {g['version']} | {'passed' if g['passed'] else 'FAILED'} | "
                      f"{', '.join(g['aliases']) or '-'} | {g['reason']} |" for g in gated)
    ran_stages = [s for s, r in ran.items() if r]
    create_markdown_artifact(
        key="training-summary",
        markdown=(f"# Training run\n\nStages run by DVC: {', '.join(ran_stages) or 'none (everything up to date)'}\n\n"
                  + (f"MLflow: [{url}]({url})\n\n" if url else "")
                  + ("| model | version | gate | aliases | reason |\n|---|---|---|---|---|\n" + table if gated
                     else "No new registered versions to gate.")),
        description="stages run, gate verdicts and aliases")
    return url


@flow(name="selfsup-training", log_prints=True)
def training(repo: str = ".", pull_data: bool = True) -> dict:
    """Reproduce the pipeline, then gate and promote every newly registered model version."""
    params = "params.yaml"
    logger = get_run_logger()
    with in_project(repo) as root:
        if pull_data:
            materialize_data(root)
        stages = pipeline_stages(root)
        ran = {}
        for stage in stages:  # sequential on purpose: stages share the CPU, and DVC holds a repo lock
            ran[stage] = run_stage(root, stage)
        if not any(ran.values()):
            logger.info("DVC: data and pipelines are up to date; nothing was trained")
        context = {"prefect_flow_run_id": str(flow_run.get_id() or ""), "gated_by": "flows.training"}
        gated = gate_and_promote(params, context)
        url = link_mlflow(params, root, gated, ran)
    return {"stages_run": [s for s, r in ran.items() if r], "gated": gated, "mlflow_run": url}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.training", description=training.__doc__)
    parser.add_argument("--repo", default=".", help="the project folder (default: .)")
    parser.add_argument("--no-pull", action="store_true", help="skip the data materialize step")
    args = parser.parse_args(argv)
    result = training(repo=args.repo, pull_data=not args.no_pull)
    for row in result["gated"]:
        print(f"{row['model']} v{row['version']}: {'passed' if row['passed'] else 'FAILED'} — {row['reason']}"
              + (f" → {', '.join(row['aliases'])}" if row["aliases"] else ""))
    print(f"stages run: {', '.join(result['stages_run']) or 'none (up to date)'}")
    if result["mlflow_run"]:
        print(f"MLflow: {result['mlflow_run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
