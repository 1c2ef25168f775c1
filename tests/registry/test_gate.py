"""The quality gate's rules, one at a time (pure function; the registry side is in tests/flows)."""

import pytest

from selfsup.config import ExportConfig, GateConfig, TaskGate
from selfsup.registry.gate import judge

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



def test_a_task_can_set_its_own_pretraining_gain():
    tie = {**GOOD, "scratch_test_macro_f1": 0.76}  # pretrained 0.75: 0.01 below scratch
    strict = judge("t", tie, None, _gate(), ExportConfig())
    assert not strict.passed and "not > gate.min_pretraining_gain +0.0000" in strict.summary
    tolerant = _gate(tasks={"t": TaskGate(min_accuracy=0.5, min_macro_f1=0.5, min_pretraining_gain=-0.02)})
    assert judge("t", tie, None, tolerant, ExportConfig()).passed
    beyond = judge("t", {**tie, "scratch_test_macro_f1": 0.78}, None, tolerant, ExportConfig())
    assert not beyond.passed and "not > gate.tasks.t.min_pretraining_gain -0.0200" in beyond.summary
    # a task's own value also applies when the global requirement is switched off
    assert not judge("t", {**tie, "scratch_test_macro_f1": 0.78}, None,
                     _gate(min_pretraining_gain=None, tasks=tolerant.tasks), ExportConfig()).passed

# ---------------------------------------------------------------------------------------------- the image encoder

IMAGE = {"knn_accuracy": 0.78, "probe_accuracy": 0.79, "random_init_knn_accuracy": 0.75, "embedding_std": 0.43,
         "effective_rank": 30.0, "onnx_label_agreement": 1.0, "onnx_max_abs_diff": 6e-6}


def _judge_image(metrics, champion=None, **gate):
    from selfsup.config import ImageGate, SSLExportConfig, SSLPretrainConfig
    from selfsup.registry.gate import judge_image

    return judge_image(metrics, champion, ImageGate(**{"min_knn_accuracy": 0.7, "min_probe_accuracy": 0.7, **gate}),
                       SSLPretrainConfig(min_embedding_std=0.1, min_effective_rank=2.0),
                       SSLExportConfig(max_abs_diff=1e-3, min_label_agreement=0.999))


def test_a_good_first_image_encoder_passes_and_becomes_champion():
    verdict = _judge_image(IMAGE)
    assert verdict.passed and verdict.becomes_champion and verdict.score == 0.78 and verdict.reasons == []


@pytest.mark.parametrize("change, phrase", [
    ({"knn_accuracy": 0.65, "random_init_knn_accuracy": 0.6},
     "kNN accuracy 0.6500 < gate.image.min_knn_accuracy 0.7000"),
    ({"probe_accuracy": 0.5}, "linear-probe accuracy 0.5000 < gate.image.min_probe_accuracy 0.7000"),
    ({"random_init_knn_accuracy": 0.78},
     "pretraining gain in kNN accuracy is +0.0000, not > gate.image.min_pretraining_gain +0.0000 (pretrained 0.7800 "
     "vs random init 0.7800)"),
    ({"embedding_std": 0.01}, "collapsed: embedding std 0.0100 < vision.pretrain.min_embedding_std 0.1000"),
    ({"effective_rank": 1.2}, "collapsed: effective rank 1.20 < vision.pretrain.min_effective_rank 2.00"),
    ({"onnx_label_agreement": 0.99}, "ONNX label agreement 99.0000% < vision.export.min_label_agreement 99.9000%"),
    ({"onnx_max_abs_diff": 0.01}, "ONNX max |diff| 1.00e-02 > vision.export.max_abs_diff 1e-03"),
])
def test_each_image_rule_fails_with_value_threshold_and_key(change, phrase):
    verdict = _judge_image({**IMAGE, **change})
    assert not verdict.passed and not verdict.becomes_champion
    assert verdict.reasons == [phrase], verdict.reasons


def test_every_failing_image_rule_is_reported():
    verdict = _judge_image({**IMAGE, "knn_accuracy": 0.1, "probe_accuracy": 0.1, "embedding_std": 0.0,
                            "effective_rank": 1.0, "onnx_max_abs_diff": 1.0})
    assert len(verdict.reasons) == 6, verdict.reasons  # both minima, gain, both collapse checks, parity


def test_image_champion_tolerance_on_the_configured_metric():
    champion = {**IMAGE, "knn_accuracy": 0.80, "probe_accuracy": 0.70}
    within = _judge_image(IMAGE, champion, champion_tolerance=0.03)
    assert within.passed and not within.becomes_champion  # challenger only
    beyond = _judge_image(IMAGE, champion, champion_tolerance=0.01)
    assert beyond.reasons == ["kNN accuracy 0.7800 is worse than the champion's 0.8000 by more than "
                              "gate.image.champion_tolerance 0.0100"]
    on_probe = _judge_image(IMAGE, champion, metric="probe_accuracy", champion_tolerance=0.0)
    assert on_probe.passed and on_probe.becomes_champion and on_probe.score == 0.79


def test_image_gain_can_be_switched_off_and_missing_metrics_fail():
    assert _judge_image({**IMAGE, "random_init_knn_accuracy": 0.9}, min_pretraining_gain=None).passed
    verdict = _judge_image({"knn_accuracy": 0.9})  # e.g. a version registered before the gate existed
    assert not verdict.passed and "lacks the metrics" in verdict.summary and "embedding_std" in verdict.summary


def test_classical_baseline_check_names_both_numbers():
    strict = _gate(tasks={"t": TaskGate(min_accuracy=0.5, min_macro_f1=0.5, max_classical_deficit=0.0)})
    ahead = {**GOOD, "classical_test_accuracy": 0.79, "classical_test_macro_f1": 0.74}
    assert judge("t", ahead, None, strict, ExportConfig()).passed
    behind = {**ahead, "classical_test_macro_f1": 0.78}  # pretrained 0.75
    verdict = judge("t", behind, None, strict, ExportConfig())
    assert not verdict.passed
    assert ("test macro_f1 0.7500 is below the classical baseline's (TF-IDF + linear model) 0.7800 by 0.0300, "
            "more than gate.tasks.t.max_classical_deficit 0.0000") in verdict.summary
    tolerant = _gate(tasks={"t": TaskGate(min_accuracy=0.5, min_macro_f1=0.5, max_classical_deficit=0.05)})
    assert judge("t", behind, None, tolerant, ExportConfig()).passed
    # the check needs the classical metrics only where it is set
    assert not judge("t", GOOD, None, strict, ExportConfig()).passed
    assert "classical_test_macro_f1" in judge("t", GOOD, None, strict, ExportConfig()).summary
    assert judge("t", GOOD, None, _gate(), ExportConfig()).passed


def test_image_raw_pixel_check_names_both_numbers():
    with_pixels = {**IMAGE, "raw_pixels_knn_accuracy": 0.80}  # the encoder's kNN: 0.78
    assert _judge_image(with_pixels).passed  # not checked unless configured
    verdict = _judge_image(with_pixels, max_raw_pixel_deficit=0.0)
    assert verdict.reasons == ["kNN accuracy 0.7800 is below kNN on raw pixels (the classical baseline) 0.8000 by "
                               "0.0200, more than gate.image.max_raw_pixel_deficit 0.0000"]
    assert _judge_image(with_pixels, max_raw_pixel_deficit=0.03).passed
    missing = _judge_image(IMAGE, max_raw_pixel_deficit=0.0)
    assert not missing.passed and "raw_pixels_knn_accuracy" in missing.summary


# ------------------------------------------------------------------------------------------------ the embedder

GOOD_EMBEDDER = {"accuracy_at_1": 0.30, "recall_at_3": 0.55, "mrr_at_10": 0.45, "articles_precision_at_5": 0.70,
                 "tfidf_accuracy_at_1": 0.32, "tfidf_articles_precision_at_5": 0.90, "mlm_mean_accuracy_at_1": 0.25,
                 "onnx_top1_agreement": 1.0, "onnx_max_abs_diff": 1e-7}


def _embedder_gate(**kw):
    from selfsup.config import EmbedderGate

    return EmbedderGate(**{"min_accuracy_at_1": 0.2, "min_precision_at_5": 0.5, **kw})


def test_a_good_first_embedder_passes_and_becomes_champion():
    from selfsup.config import EmbedderExportConfig
    from selfsup.registry.gate import judge_embedder

    verdict = judge_embedder(GOOD_EMBEDDER, None, _embedder_gate(), EmbedderExportConfig())
    assert verdict.passed and verdict.becomes_champion and verdict.score == 0.30


@pytest.mark.parametrize("change, gate, phrase", [
    ({"accuracy_at_1": 0.1}, {}, "answer accuracy@1 0.1000 < gate.embedder.min_accuracy_at_1 0.2000"),
    ({"articles_precision_at_5": 0.4}, {}, "related-article precision@5 0.4000 < gate.embedder.min_precision_at_5"),
    ({}, {"min_mlm_gain": 0.1}, "gain over mean-pooled MLM embeddings in answer accuracy@1 is +0.0500, not > "
                                "gate.embedder.min_mlm_gain +0.1000 (SimCSE 0.3000 vs MLM 0.2500)"),
    ({}, {"max_baseline_deficit": 0.1}, "related-article precision@5 0.7000 is below TF-IDF cosine (the classical "
                                        "baseline) 0.9000 by 0.2000, more than gate.embedder.max_baseline_deficit"),
    ({"onnx_top1_agreement": 0.9}, {}, "ONNX nearest-entry agreement 90.0000% < retrieval.export.min_top1_agreement"),
    ({"onnx_max_abs_diff": 0.1}, {}, "ONNX max |Δembedding| 1.00e-01 > retrieval.export.max_abs_diff"),
])
def test_each_embedder_rule_fails_with_value_threshold_and_key(change, gate, phrase):
    from selfsup.config import EmbedderExportConfig
    from selfsup.registry.gate import judge_embedder

    verdict = judge_embedder({**GOOD_EMBEDDER, **change}, None, _embedder_gate(**gate), EmbedderExportConfig())
    assert not verdict.passed and any(phrase in r for r in verdict.reasons), verdict.reasons


def test_embedder_baseline_check_passes_within_the_deficit_and_champions_compare_on_the_metric():
    from selfsup.config import EmbedderExportConfig
    from selfsup.registry.gate import judge_embedder

    within = judge_embedder(GOOD_EMBEDDER, None, _embedder_gate(max_baseline_deficit=0.25), EmbedderExportConfig())
    assert within.passed
    champion = {**GOOD_EMBEDDER, "articles_precision_at_5": 0.80}
    worse = judge_embedder(GOOD_EMBEDDER, champion, _embedder_gate(metric="articles_precision_at_5"),
                           EmbedderExportConfig())
    assert not worse.passed and "worse than the champion's 0.8000" in worse.summary
    missing = judge_embedder({k: v for k, v in GOOD_EMBEDDER.items() if not k.startswith("tfidf")}, None,
                             _embedder_gate(max_baseline_deficit=0.1), EmbedderExportConfig())
    assert not missing.passed and "tfidf_accuracy_at_1" in missing.summary
