"""Registration as the register stage does it (``register_exports``), for the tests against a tracking server."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path


def register_with_reports(cfg, project: Path, export: Path, macro_f1: float, params: Path) -> list:
    """``export`` registered as the intent model by ``register_exports`` (the register stage's code), with the
    reports the evaluate and export stages write under ``project``; the pretrained arm beats from-scratch and the
    classical arm, so the gate passes it. ``cfg``'s ``export.out_dir`` must be ``project / "onnx"``."""
    from selfsup.registry.lifecycle import register_exports
    from selfsup.tracking import open_run

    shutil.copytree(export, project / "onnx" / "intent", dirs_exist_ok=True)
    reports = {"evaluate": {"pretrained": {"accuracy": macro_f1 + 0.05, "macro_f1": macro_f1},
                            "scratch": {"accuracy": macro_f1 - 0.05, "macro_f1": macro_f1 - 0.1},
                            "classical": {"accuracy": macro_f1, "macro_f1": macro_f1 - 0.01}},
               "export": {"label_agreement": 1.0, "max_abs_logit_diff": 2e-6}}
    for stage, report in reports.items():
        (project / "artifacts" / stage / "intent").mkdir(parents=True, exist_ok=True)
        (project / "artifacts" / stage / "intent" / "metrics.json").write_text(json.dumps(report))
    factory = partial(open_run, cfg, "register", params, None)
    return register_exports(cfg, ["intent"], factory, "test-commit", artifacts=project / "artifacts")
