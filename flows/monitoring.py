"""Sentiment monitoring: score each new inbox batch with the champion model, detect negative surges, alert.

    python -m flows.monitoring [--repo .]

Per batch (file-name order): validate (Great Expectations ``batch`` suite) → quarantine + alert if it fails →
otherwise score with ``<prefix>-sentiment@champion`` through onnxruntime → append to the history (negative share
overall and per segment) → apply the surge rule (``selfsup.monitoring.sentiment``) → alert on a surge. Then the
trend plot and report are rewritten and logged, with one metric per batch, to the MLflow experiment
``<experiment>-monitoring``. Alerts go through the Prefect notification block named by ``monitor.alert_block``
(Slack, Teams, e-mail, webhook). The fetch / validate / quarantine tasks are shared with routing (``flows/inbox.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.common import in_project, retry_on_io, send_alert
from flows.inbox import fetch_model, quarantine_batch, validate


@task(task_run_name="score {batch.name}")
def score_batch(batch: Path, table, model_dir: str, model_version: int, params: str) -> dict:
    from selfsup.config import load_config
    from selfsup.monitoring.inbox import mark_processed
    from selfsup.monitoring.sentiment import append_history, check_surge, history_row, read_history, segment_shares
    from selfsup.serve.predict import OnnxClassifier

    cfg = load_config(params).monitor
    texts = table.columns["text"]
    labels = [p.label for p in OnnxClassifier(Path(model_dir)).predict(texts)]
    negatives = sum(label == cfg.negative_label for label in labels)
    check = check_surge(read_history(cfg.state_dir), negatives, len(texts), cfg)
    segments = segment_shares(table.columns["segment"], labels, cfg.negative_label)
    append_history(cfg.state_dir, history_row(batch.name, check, len(texts), negatives, model_version, segments))
    mark_processed(batch, Path(cfg.state_dir))
    logger = get_run_logger()
    (logger.warning if check.surge else logger.info)("%s: %s%s", batch.name, check.explanation,
                                                    " → NEGATIVE SURGE" if check.surge else "")
    return {"batch": batch.name, "rows": len(texts), "negative": negatives, "share": check.share,
            "baseline_share": check.baseline_share, "z": check.z, "surge": check.surge,
            "explanation": check.explanation, "segments": segments}


@task(name="alert on the surge")
def alert_surge(result: dict, alert_block: str, negative_label: str) -> bool:
    worst = sorted(result["segments"].items(), key=lambda kv: -kv[1]["share"])[:3]
    by_segment = "; ".join(f"{k}: {v['share']:.0%} of {v['rows']}" for k, v in worst)
    return send_alert(alert_block, f"[selfsup] {negative_label} surge in batch {result['batch']}",
                      f"{result['explanation']}." + (f" Most {negative_label} segments: {by_segment}." if worst else ""))


@task(name="trend plot, report, MLflow", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_io)
def publish(params: str, scored: list[dict], quarantined: list[dict], model_version: int | None) -> dict:
    from selfsup.config import load_config
    from selfsup.monitoring.sentiment import plot_trend, read_history, write_report

    cfg = load_config(params)
    state = Path(cfg.monitor.state_dir)
    history = read_history(state)
    plot = plot_trend(history, state / "trend.png", cfg.monitor) if history else None
    report = write_report(history, quarantined, state / "report.md", cfg.monitor)
    create_markdown_artifact(key="sentiment-monitoring", markdown=report.read_text(), description="monitoring report")
    if cfg.tracking.enabled:
        from selfsup.adapters.mlflow import standalone_run

        with standalone_run(cfg.tracking, f"{cfg.tracking.experiment}-monitoring", "monitor sentiment",
                            {"task": cfg.monitor.task, "model_version": str(model_version)}) as tracker:
            tracker.log_params({k: v for k, v in vars(cfg.monitor).items() if k != "batch"})
            offset = len(history) - len(scored)
            for step, row in enumerate(scored, start=offset + 1):
                tracker.log_metrics({"negative_share": row["share"], "surge": float(row["surge"]),
                                     **({"z": row["z"]} if row["z"] is not None else {})}, step=step)
            tracker.log_metrics({"batches_scored": len(scored), "batches_quarantined": len(quarantined),
                                 "surges": sum(r["surge"] for r in scored)})
            for path in (plot, report, state / "history.csv"):
                if path is not None and path.exists():
                    tracker.log_artifact(path)
    return {"plot": str(plot) if plot else None, "report": str(report)}


@flow(name="selfsup-sentiment-monitor", log_prints=True)
def monitor_sentiment(repo: str = ".") -> dict:
    """Score new inbox batches with the champion sentiment model; alert on negative surges and bad batches."""
    params = "params.yaml"
    logger = get_run_logger()
    with in_project(repo):
        from selfsup.config import load_config
        from selfsup.monitoring.inbox import inbox_batches

        cfg = load_config(params)
        cfg.served_task("monitor")
        batches = inbox_batches(cfg.monitor.inbox)
        if not batches:
            logger.info("inbox %s is empty: nothing to score", cfg.monitor.inbox)
            return {"scored": [], "quarantined": [], "surges": []}
        version, model_dir = fetch_model(params, "monitor")
        scored, quarantined = [], []
        for batch in batches:
            table, failures = validate(batch, params, "monitor")
            if failures:
                quarantined.append(quarantine_batch(batch, str(cfg.monitor.state_dir), failures,
                                                    cfg.monitor.alert_block))
                continue
            result = score_batch(batch, table, model_dir, version, params)
            if result["surge"]:
                alert_surge(result, cfg.monitor.alert_block, cfg.monitor.negative_label)
            scored.append(result)
        published = publish(params, scored, quarantined, version)
    return {"scored": scored, "quarantined": quarantined, "surges": [r["batch"] for r in scored if r["surge"]],
            **published}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.monitoring", description=monitor_sentiment.__doc__)
    parser.add_argument("--repo", default=".", help="the project folder (default: .)")
    args = parser.parse_args(argv)
    result = monitor_sentiment(repo=args.repo)
    print(f"scored {len(result['scored'])} batch(es), quarantined {len(result['quarantined'])}, "
          f"surges: {', '.join(result['surges']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
