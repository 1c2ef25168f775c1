"""Customer-service routing: classify each new inbox batch of messages with the champion intent model.

    python -m flows.routing [--repo .]

Per batch (file-name order): validate → quarantine + alert if it fails → otherwise classify with
``<prefix>-intent@champion`` (onnxruntime) and write ``<state_dir>/routed/<batch>.csv`` (id, text, intent,
confidence, runner-up, needs_human); messages under ``route.min_confidence`` are also written to
``<state_dir>/needs_human/<batch>.csv``, the queue a person works through.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.common import in_project
from flows.inbox import fetch_model, quarantine_batch, validate


@task(task_run_name="route {batch.name}")
def route_batch(batch: Path, table, model_dir: str, params: str) -> dict:
    from selfsup.config import load_config
    from selfsup.monitoring.inbox import mark_processed, write_csv
    from selfsup.monitoring.routing import ROUTED_FIELDS, route
    from selfsup.serve.predict import OnnxClassifier

    cfg = load_config(params).route
    texts = table.columns["text"]
    routed, needs_human = route(table.columns["id"], texts, OnnxClassifier(Path(model_dir)).predict(texts),
                                cfg.min_confidence)
    state = Path(cfg.state_dir)
    write_csv(state / "routed" / batch.name, routed, ROUTED_FIELDS)
    if needs_human:
        write_csv(state / "needs_human" / batch.name, needs_human, ROUTED_FIELDS)
    mark_processed(batch, state)
    counts: dict[str, int] = {}
    for row in routed:
        counts[row["intent"]] = counts.get(row["intent"], 0) + 1
    get_run_logger().info("%s: %d messages routed %s; %d below confidence %.2f → needs_human", batch.name,
                          len(routed), counts, len(needs_human), cfg.min_confidence)
    return {"batch": batch.name, "rows": len(routed), "needs_human": len(needs_human), "by_intent": counts}


@flow(name="selfsup-intent-routing", log_prints=True)
def route_messages(repo: str = ".") -> dict:
    """Route new inbox batches of customer messages with the champion intent model."""
    params = "params.yaml"
    with in_project(repo):
        from selfsup.config import load_config
        from selfsup.monitoring.inbox import inbox_batches

        cfg = load_config(params)
        cfg.served_task("route")
        batches = inbox_batches(cfg.route.inbox)
        if not batches:
            get_run_logger().info("inbox %s is empty: nothing to route", cfg.route.inbox)
            return {"routed": [], "quarantined": []}
        _, model_dir = fetch_model(params, "route")
        routed, quarantined = [], []
        for batch in batches:
            table, failures = validate(batch, params, "route")
            if failures:
                quarantined.append(quarantine_batch(batch, str(cfg.route.state_dir), failures, cfg.route.alert_block))
            else:
                routed.append(route_batch(batch, table, model_dir, params))
    return {"routed": routed, "quarantined": quarantined}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.routing", description=route_messages.__doc__)
    parser.add_argument("--repo", default=".", help="the project folder (default: .)")
    args = parser.parse_args(argv)
    result = route_messages(repo=args.repo)
    for row in result["routed"]:
        print(f"{row['batch']}: {row['rows']} routed, {row['needs_human']} to needs_human")
    print(f"quarantined: {len(result['quarantined'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
