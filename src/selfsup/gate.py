"""The quality gate: may a newly registered model version receive a registry alias?

A pure function of the version's metrics (as recorded on the registry version), the current champion's metrics and
the thresholds in ``params.yaml`` (``gate`` and, for ONNX parity, ``export``). No MLflow here: the training flow
and ``selfsup registry`` read the registry through ``selfsup.registry`` and ask this module for the verdict.

Checks, in order (every failing one is reported, not only the first):

* ``min_accuracy`` / ``min_macro_f1`` — the task's test-set minimum (``gate.tasks.<task>``)
* ONNX parity — label agreement and max |Δlogit| against PyTorch (``export.min_label_agreement`` / ``max_abs_logit_diff``)
* pretraining gain — pretrained test metric minus the from-scratch baseline's > ``gate.min_pretraining_gain``
* champion tolerance — not worse than the current champion by more than ``gate.champion_tolerance``

A version that passes becomes ``challenger``; it becomes ``champion`` only when it is strictly better than the
current champion on ``gate.metric`` (or there is no champion yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfsup.config import ExportConfig, GateConfig

# The metrics a registered version carries (tags ``metric.<name>``, written by ``selfsup register``).
REQUIRED_METRICS = ("test_accuracy", "test_macro_f1", "scratch_test_accuracy", "scratch_test_macro_f1",
                    "onnx_label_agreement", "onnx_max_abs_logit_diff")


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed
    becomes_champion: bool = False
    score: float = 0.0  # the version's value of gate.metric

    @property
    def summary(self) -> str:
        return "passed all checks" if self.passed else "; ".join(self.reasons)


def judge(task: str, metrics: dict[str, float], champion: dict[str, float] | None, gate: GateConfig,
          export: ExportConfig) -> Verdict:
    """The verdict for one version of ``task``. ``champion`` is the current champion's metrics (None: no champion)."""
    missing = [name for name in REQUIRED_METRICS if name not in metrics]
    if missing:
        return Verdict(False, [f"the version lacks the metrics {missing} (was it registered by `selfsup register`?)"])
    reasons = []
    minimum = gate.tasks.get(task)
    if minimum is not None:
        if metrics["test_accuracy"] < minimum.min_accuracy:
            reasons.append(f"test accuracy {metrics['test_accuracy']:.4f} < gate.tasks.{task}.min_accuracy "
                           f"{minimum.min_accuracy:.4f}")
        if metrics["test_macro_f1"] < minimum.min_macro_f1:
            reasons.append(f"test macro-F1 {metrics['test_macro_f1']:.4f} < gate.tasks.{task}.min_macro_f1 "
                           f"{minimum.min_macro_f1:.4f}")
    if metrics["onnx_label_agreement"] < export.min_label_agreement:
        reasons.append(f"ONNX label agreement {metrics['onnx_label_agreement']:.4%} < export.min_label_agreement "
                       f"{export.min_label_agreement:.4%}")
    if metrics["onnx_max_abs_logit_diff"] > export.max_abs_logit_diff:
        reasons.append(f"ONNX max |Δlogit| {metrics['onnx_max_abs_logit_diff']:.2e} > export.max_abs_logit_diff "
                       f"{export.max_abs_logit_diff:.0e}")
    score = metrics[f"test_{gate.metric}"]
    if gate.min_pretraining_gain is not None:
        gain = score - metrics[f"scratch_test_{gate.metric}"]
        if gain <= gate.min_pretraining_gain:
            reasons.append(f"pretraining gain in test {gate.metric} is {gain:+.4f}, not > gate.min_pretraining_gain "
                           f"{gate.min_pretraining_gain:+.4f} (pretrained {score:.4f} vs from scratch "
                           f"{metrics[f'scratch_test_{gate.metric}']:.4f})")
    champion_score = None if champion is None else champion.get(f"test_{gate.metric}")
    if champion_score is not None and score < champion_score - gate.champion_tolerance:
        reasons.append(f"test {gate.metric} {score:.4f} is worse than the champion's {champion_score:.4f} by more "
                       f"than gate.champion_tolerance {gate.champion_tolerance:.4f}")
    passed = not reasons
    becomes_champion = passed and (champion_score is None or score > champion_score)
    return Verdict(passed, reasons, becomes_champion, score)
