"""The quality gate: may a newly registered model version receive a registry alias?

A pure function of the version's metrics (as recorded on the registry version), the current champion's metrics and
the thresholds in ``params.yaml`` (``gate`` and, for ONNX parity, ``export``). No MLflow here: the training flow
and ``selfsup registry`` read the registry through ``selfsup.registry.lifecycle`` and ask this module for the verdict.

Checks, in order (every failing one is reported, not only the first):

* ``min_accuracy`` / ``min_macro_f1`` — the task's test-set minimum (``gate.tasks.<task>``)
* ONNX parity — label agreement and max |Δlogit| against PyTorch (``export.min_label_agreement`` / ``max_abs_logit_diff``)
* pretraining gain — pretrained test metric minus the from-scratch baseline's > ``gate.min_pretraining_gain``
  (or the task's own ``gate.tasks.<task>.min_pretraining_gain``)
* classical baseline — pretrained test metric not below the classical arm's (TF-IDF + linear model, same labels) by
  more than ``gate.tasks.<task>.max_classical_deficit`` (only where that is set)
* champion tolerance — not worse than the current champion by more than ``gate.champion_tolerance``

A version that passes becomes ``challenger``; it becomes ``champion`` only when it is strictly better than the
current champion on ``gate.metric`` (or there is no champion yet).

The image encoder has its own checks (``judge_image``, thresholds in ``gate.image``), on held-out accuracies:

* ``min_knn_accuracy`` / ``min_probe_accuracy`` — kNN accuracy and the exported linear probe's accuracy
* pretraining gain — kNN accuracy minus the same encoder's at random init > ``gate.image.min_pretraining_gain``
* classical baseline — kNN accuracy not below kNN on raw pixels by more than ``gate.image.max_raw_pixel_deficit``
  (only where that is set)
* no collapse — embedding std / effective rank at the end of pretraining >= ``vision.pretrain.min_embedding_std`` /
  ``min_effective_rank`` (the values ``pretrain_ssl`` fails on, so a version registered under looser settings is
  still caught)
* ONNX parity — ``vision.export.min_label_agreement`` / ``max_abs_diff``
* champion tolerance — on ``gate.image.metric``, within ``gate.image.champion_tolerance``

The sentence embedder (``judge_embedder``, thresholds in ``gate.embedder``), on the retrieval stage's test metrics:

* ``min_accuracy_at_1`` / ``min_precision_at_5`` — answer retrieval accuracy@1 and related-article precision@5
* gain over mean-pooled MLM embeddings — accuracy@1 minus theirs > ``gate.embedder.min_mlm_gain`` (only where set)
* classical baseline — accuracy@1 and precision@5 each not below TF-IDF cosine's by more than
  ``gate.embedder.max_baseline_deficit`` (only where set)
* ONNX parity — ``retrieval.export.min_top1_agreement`` / ``max_abs_diff``
* champion tolerance — on ``gate.embedder.metric``, within ``gate.embedder.champion_tolerance``
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfsup.config import (EmbedderExportConfig, EmbedderGate, ExportConfig, GateConfig, ImageGate, SSLExportConfig,
                            SSLPretrainConfig)

# The metrics a registered version carries (tags ``metric.<name>``, written by ``selfsup register``).
REQUIRED_METRICS = ("test_accuracy", "test_macro_f1", "scratch_test_accuracy", "scratch_test_macro_f1",
                    "onnx_label_agreement", "onnx_max_abs_logit_diff")
CLASSICAL_METRICS = ("classical_test_accuracy", "classical_test_macro_f1")  # required where the check is set
REQUIRED_EMBEDDER_METRICS = ("accuracy_at_1", "mrr_at_10", "articles_precision_at_5", "onnx_top1_agreement",
                             "onnx_max_abs_diff")
REQUIRED_IMAGE_METRICS = ("knn_accuracy", "probe_accuracy", "random_init_knn_accuracy", "embedding_std",
                          "effective_rank", "onnx_label_agreement", "onnx_max_abs_diff")


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed
    becomes_champion: bool = False
    score: float = 0.0  # the version's value of gate.metric

    @property
    def summary(self) -> str:
        return "passed all checks" if self.passed else "; ".join(self.reasons)


def _missing(metrics: dict[str, float], required: tuple[str, ...]) -> Verdict | None:
    """A failing verdict when the version lacks any required metric tag, else None."""
    missing = [name for name in required if name not in metrics]
    if not missing:
        return None
    return Verdict(False, [f"the version lacks the metrics {missing} (was it registered by `selfsup register`?)"])


def _against_champion(reasons: list[str], score: float, champion: dict[str, float] | None, key: str, label: str,
                      tolerance: float, tolerance_key: str) -> Verdict:
    """The champion-tolerance check, then the verdict: a passing version becomes champion when strictly better."""
    champion_score = None if champion is None else champion.get(key)
    if champion_score is not None and score < champion_score - tolerance:
        reasons.append(f"{label} {score:.4f} is worse than the champion's {champion_score:.4f} by more than "
                       f"{tolerance_key} {tolerance:.4f}")
    passed = not reasons
    return Verdict(passed, reasons, passed and (champion_score is None or score > champion_score), score)


def judge(task: str, metrics: dict[str, float], champion: dict[str, float] | None, gate: GateConfig,
          export: ExportConfig) -> Verdict:
    """The verdict for one version of ``task``. ``champion`` is the current champion's metrics (None: no champion)."""
    minimum = gate.tasks.get(task)
    classical_deficit = None if minimum is None else minimum.max_classical_deficit
    missing = _missing(metrics, REQUIRED_METRICS + (CLASSICAL_METRICS if classical_deficit is not None else ()))
    if missing:
        return missing
    reasons = []
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
    required_gain, gain_key = gate.min_pretraining_gain, "gate.min_pretraining_gain"
    if minimum is not None and minimum.min_pretraining_gain is not None:
        required_gain, gain_key = minimum.min_pretraining_gain, f"gate.tasks.{task}.min_pretraining_gain"
    if required_gain is not None:
        gain = score - metrics[f"scratch_test_{gate.metric}"]
        if gain <= required_gain:
            reasons.append(f"pretraining gain in test {gate.metric} is {gain:+.4f}, not > {gain_key} "
                           f"{required_gain:+.4f} (pretrained {score:.4f} vs from scratch "
                           f"{metrics[f'scratch_test_{gate.metric}']:.4f})")
    if classical_deficit is not None:
        classical = metrics[f"classical_test_{gate.metric}"]
        if score < classical - classical_deficit:
            reasons.append(f"test {gate.metric} {score:.4f} is below the classical baseline's (TF-IDF + linear "
                           f"model) {classical:.4f} by {classical - score:.4f}, more than "
                           f"gate.tasks.{task}.max_classical_deficit {classical_deficit:.4f}")
    return _against_champion(reasons, score, champion, f"test_{gate.metric}", f"test {gate.metric}",
                             gate.champion_tolerance, "gate.champion_tolerance")


def judge_image(metrics: dict[str, float], champion: dict[str, float] | None, gate: ImageGate,
                pretrain: SSLPretrainConfig, export: SSLExportConfig) -> Verdict:
    """The verdict for one image-encoder version. ``champion`` is the current champion's metrics (None: none)."""
    pixel_check = gate.max_raw_pixel_deficit is not None
    missing = _missing(metrics, REQUIRED_IMAGE_METRICS + (("raw_pixels_knn_accuracy",) if pixel_check else ()))
    if missing:
        return missing
    reasons = []
    knn, probe = metrics["knn_accuracy"], metrics["probe_accuracy"]
    if knn < gate.min_knn_accuracy:
        reasons.append(f"kNN accuracy {knn:.4f} < gate.image.min_knn_accuracy {gate.min_knn_accuracy:.4f}")
    if probe < gate.min_probe_accuracy:
        reasons.append(f"linear-probe accuracy {probe:.4f} < gate.image.min_probe_accuracy "
                       f"{gate.min_probe_accuracy:.4f}")
    if gate.min_pretraining_gain is not None:
        gain = knn - metrics["random_init_knn_accuracy"]
        if gain <= gate.min_pretraining_gain:
            reasons.append(f"pretraining gain in kNN accuracy is {gain:+.4f}, not > gate.image.min_pretraining_gain "
                           f"{gate.min_pretraining_gain:+.4f} (pretrained {knn:.4f} vs random init "
                           f"{metrics['random_init_knn_accuracy']:.4f})")
    if pixel_check and knn < metrics["raw_pixels_knn_accuracy"] - gate.max_raw_pixel_deficit:
        pixels = metrics["raw_pixels_knn_accuracy"]
        reasons.append(f"kNN accuracy {knn:.4f} is below kNN on raw pixels (the classical baseline) {pixels:.4f} by "
                       f"{pixels - knn:.4f}, more than gate.image.max_raw_pixel_deficit "
                       f"{gate.max_raw_pixel_deficit:.4f}")
    if metrics["embedding_std"] < pretrain.min_embedding_std:
        reasons.append(f"collapsed: embedding std {metrics['embedding_std']:.4f} < vision.pretrain.min_embedding_std "
                       f"{pretrain.min_embedding_std:.4f}")
    if metrics["effective_rank"] < pretrain.min_effective_rank:
        reasons.append(f"collapsed: effective rank {metrics['effective_rank']:.2f} < "
                       f"vision.pretrain.min_effective_rank {pretrain.min_effective_rank:.2f}")
    if metrics["onnx_label_agreement"] < export.min_label_agreement:
        reasons.append(f"ONNX label agreement {metrics['onnx_label_agreement']:.4%} < "
                       f"vision.export.min_label_agreement {export.min_label_agreement:.4%}")
    if metrics["onnx_max_abs_diff"] > export.max_abs_diff:
        reasons.append(f"ONNX max |diff| {metrics['onnx_max_abs_diff']:.2e} > vision.export.max_abs_diff "
                       f"{export.max_abs_diff:.0e}")
    label = {"knn_accuracy": "kNN accuracy", "probe_accuracy": "linear-probe accuracy"}[gate.metric]
    return _against_champion(reasons, metrics[gate.metric], champion, gate.metric, label, gate.champion_tolerance,
                             "gate.image.champion_tolerance")


EMBEDDER_LABELS = {"accuracy_at_1": "answer accuracy@1", "mrr_at_10": "answer MRR@10",
                   "articles_precision_at_5": "related-article precision@5"}


def judge_embedder(metrics: dict[str, float], champion: dict[str, float] | None, gate: EmbedderGate,
                   export: EmbedderExportConfig) -> Verdict:
    """The verdict for one sentence-embedder version. ``champion`` is the current champion's metrics (None: none)."""
    compared = ("accuracy_at_1", "articles_precision_at_5")
    required = (REQUIRED_EMBEDDER_METRICS + (("mlm_mean_accuracy_at_1",) if gate.min_mlm_gain is not None else ())
                + (tuple(f"tfidf_{k}" for k in compared) if gate.max_baseline_deficit is not None else ()))
    missing = _missing(metrics, required)
    if missing:
        return missing
    reasons = []
    for key, minimum, setting in (("accuracy_at_1", gate.min_accuracy_at_1, "min_accuracy_at_1"),
                                  ("articles_precision_at_5", gate.min_precision_at_5, "min_precision_at_5")):
        if metrics[key] < minimum:
            reasons.append(f"{EMBEDDER_LABELS[key]} {metrics[key]:.4f} < gate.embedder.{setting} {minimum:.4f}")
    if gate.min_mlm_gain is not None:
        gain = metrics["accuracy_at_1"] - metrics["mlm_mean_accuracy_at_1"]
        if gain <= gate.min_mlm_gain:
            reasons.append(f"gain over mean-pooled MLM embeddings in answer accuracy@1 is {gain:+.4f}, not > "
                           f"gate.embedder.min_mlm_gain {gate.min_mlm_gain:+.4f} (SimCSE {metrics['accuracy_at_1']:.4f}"
                           f" vs MLM {metrics['mlm_mean_accuracy_at_1']:.4f})")
    if gate.max_baseline_deficit is not None:
        for key in compared:
            ours, baseline = metrics[key], metrics[f"tfidf_{key}"]
            if ours < baseline - gate.max_baseline_deficit:
                reasons.append(f"{EMBEDDER_LABELS[key]} {ours:.4f} is below TF-IDF cosine (the classical baseline) "
                               f"{baseline:.4f} by {baseline - ours:.4f}, more than gate.embedder.max_baseline_deficit "
                               f"{gate.max_baseline_deficit:.4f}")
    if metrics["onnx_top1_agreement"] < export.min_top1_agreement:
        reasons.append(f"ONNX nearest-entry agreement {metrics['onnx_top1_agreement']:.4%} < "
                       f"retrieval.export.min_top1_agreement {export.min_top1_agreement:.4%}")
    if metrics["onnx_max_abs_diff"] > export.max_abs_diff:
        reasons.append(f"ONNX max |Δembedding| {metrics['onnx_max_abs_diff']:.2e} > retrieval.export.max_abs_diff "
                       f"{export.max_abs_diff:.0e}")
    return _against_champion(reasons, metrics[gate.metric], champion, gate.metric, EMBEDDER_LABELS[gate.metric],
                             gate.champion_tolerance, "gate.embedder.champion_tolerance")
