"""The tasks both inbox flows run (``flows/monitoring.py`` and ``flows/routing.py``): fetch the champion model of
the flow's ``params.yaml`` section, validate a batch, quarantine a batch that failed (with an alert).

``section`` names the flow's part of ``params.yaml`` (``monitor`` or ``route``): it says which task's model, which
inbox rules and which state folder.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.common import retry_on_io, send_alert


@task(name="fetch the champion model", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_io)
def fetch_model(params: str, section: str) -> tuple[int, str]:
    from selfsup.config import load_config
    from selfsup.registry.lifecycle import fetch_model as fetch

    cfg = load_config(params)
    spec = getattr(cfg, section)
    version, folder = fetch(cfg, spec.task, spec.alias, Path(spec.state_dir) / "model")
    get_run_logger().info("using %s-%s v%s (@%s)", cfg.export.registered_model_prefix, spec.task, version, spec.alias)
    return version, str(folder)


@task(task_run_name="validate {batch.name}")
def validate(batch: Path, params: str, section: str):
    from selfsup.config import load_config
    from selfsup.datasets.validation import validate_batch
    from selfsup.monitoring.inbox import table_rules

    spec = getattr(load_config(params), section)
    table, failures = validate_batch(batch, table_rules(spec.batch), spec.batch.min_rows)
    return table, [f.message() for f in failures]


@task(task_run_name="quarantine {batch.name}")
def quarantine_batch(batch: Path, state_dir: str, reasons: list[str], alert_block: str) -> dict:
    from selfsup.monitoring.inbox import quarantine

    target = quarantine(batch, Path(state_dir), reasons)
    shown = "\n".join(reasons[:5]) + (f"\n... and {len(reasons) - 5} more" if len(reasons) > 5 else "")
    get_run_logger().error("batch %s quarantined (%d failing checks):\n%s", batch.name, len(reasons), shown)
    send_alert(alert_block, f"[selfsup] batch {batch.name} quarantined",
               f"Batch {batch.name} failed validation and was not scored; moved to {target}.\n{shown}")
    return {"batch": batch.name, "reason": reasons[0] if reasons else "", "moved_to": str(target)}
