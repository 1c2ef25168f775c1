"""The quality gate's rules, one at a time (pure function; the registry side is in tests/flows)."""

import pytest

from selfsup.config import ExportConfig, GateConfig, TaskGate
from selfsup.gate import judge

GOOD = {"test_accuracy": 0.80, "test_macro_f1": 0.75, "scratch_test_accuracy": 0.70, "scratch_test_macro_f1": 0.65,
        "onnx_label_agreement": 1.0, "onnx_max_abs_logit_diff": 1e-6}


def _gate(**kw):
    return GateConfig(**{"tasks": {"t": TaskGate(min_accuracy=0.5, min_macro_f1=0.5)}, **kw})


def test_a_good_first_version_passes_and_becomes_champion():
    verdict = judge("t", GOOD, None, _gate(), ExportConfig())
    assert verdict.passed and verdict.becomes_champion and verdict.reasons == []


@pytest.mark.parametrize("change, phrase", [
    ({"test_accuracy": 0.4}, "test accuracy 0.4000 < gate.tasks.t.min_accuracy"),
    ({"test_macro_f1": 0.3, "scratch_test_macro_f1": 0.2}, "test macro-F1 0.3000 < gate.tasks.t.min_macro_f1"),
    ({"onnx_label_agreement": 0.99}, "ONNX label agreement"),
    ({"onnx_max_abs_logit_diff": 0.5}, "ONNX max |Δlogit|"),
    ({"scratch_test_macro_f1": 0.75}, "pretraining gain in test macro_f1 is +0.0000"),
])
def test_each_rule_fails_with_its_reason(change, phrase):
    verdict = judge("t", {**GOOD, **change}, None, _gate(), ExportConfig())
    assert not verdict.passed and not verdict.becomes_champion
    assert any(phrase in reason for reason in verdict.reasons), verdict.reasons


def test_champion_tolerance_and_strict_improvement():
    champion = {**GOOD, "test_macro_f1": 0.80}
    within = judge("t", GOOD, champion, _gate(champion_tolerance=0.06), ExportConfig())
    assert within.passed and not within.becomes_champion  # challenger only: not better than the champion
    beyond = judge("t", GOOD, champion, _gate(champion_tolerance=0.04), ExportConfig())
    assert not beyond.passed and "worse than the champion's 0.8000" in beyond.summary
    better = judge("t", {**GOOD, "test_macro_f1": 0.81}, champion, _gate(), ExportConfig())
    assert better.passed and better.becomes_champion


def test_pretraining_gain_can_be_switched_off_and_missing_metrics_fail():
    assert judge("t", {**GOOD, "scratch_test_macro_f1": 0.9}, None, _gate(min_pretraining_gain=None),
                 ExportConfig()).passed
    verdict = judge("t", {"test_accuracy": 0.9}, None, _gate(), ExportConfig())
    assert not verdict.passed and "lacks the metrics" in verdict.summary
