"""Self-training: the unlabeled pool never holds a labelled text, pseudo-labels respect the threshold (probability
or decision-score margin) and the per-class cap, the classical labeler's scores follow the task's label order, and
the whole loop runs on a tiny model (fixture data) with either labeler and keeps the better of plain and student."""

import dataclasses
import json

import numpy as np
import pytest

from selfsup.config import SelfTrainingConfig
from selfsup.text.data import read_labelled
from selfsup.text.data import cap_stratified
from selfsup.text.self_training import (beyond_cap_pool, classical_scores, default_student_settings, select_by_margin,
                                        select_pseudo_labels, self_train, unlabeled_pool)


def test_pool_leaves_out_every_labelled_text_up_to_case_and_spacing():
    corpus = [("tweets", "My bag is lost"), ("tweets", "flight delayed again"), ("bbc_news", "Markets fell"),
              ("tweets", "great crew today")]
    pool = unlabeled_pool(corpus, ["tweets"], ["my  BAG is lost", "Great crew today"], max_pool=10, seed=0)
    assert pool == ["flight delayed again"]
    assert len(unlabeled_pool(corpus * 1, ["tweets", "bbc_news"], [], max_pool=2, seed=0)) == 2
    with pytest.raises(ValueError, match=r"sources not in the corpus: \['reddit'\]"):
        unlabeled_pool(corpus, ["reddit"], [], 10, 0)
    # the sentiment task's case: every tweet of the corpus is one of its labelled texts
    with pytest.raises(ValueError, match=r"\['tweets'\]: no unlabeled text is left"):
        unlabeled_pool(corpus, ["tweets"], [text for _, text in corpus], 10, 0)


def test_beyond_cap_pool_is_the_training_texts_the_cap_leaves_out_minus_labelled_ones():
    texts = [f"tweet {i}" for i in range(12)] + ["TWEET 3", "a validation tweet", "tweet 11"]
    labels = ["neg", "pos", "neu"] * 5
    kept, _ = cap_stratified(texts, labels, 6, seed=3)  # what the fine-tuning trains on
    pool = beyond_cap_pool(texts, labels, 6, ["A validation  tweet", "a test tweet"], max_pool=100, seed=3)
    keys = {t.lower() for t in kept}
    assert all(t.lower() not in keys for t in pool)  # no kept label comes back unlabeled, up to case
    assert "a validation tweet" not in pool and len(pool) == len({t.lower() for t in pool})  # held out, no repeats
    assert set(pool) | {t for t in texts if t.lower() in keys} >= set(texts) - {"a validation tweet", "TWEET 3",
                                                                                  "tweet 11"}
    assert len(beyond_cap_pool(texts, labels, 6, [], max_pool=2, seed=3)) == 2  # a seeded sample
    with pytest.raises(ValueError, match=r"max_train_examples \(15\) keeps every one of the 15 training texts"):
        beyond_cap_pool(texts, labels, 15, [], 100, 0)


def test_pseudo_labels_respect_the_threshold_and_the_per_class_cap():
    probabilities = np.array([[0.95, 0.05], [0.97, 0.03], [0.99, 0.01], [0.6, 0.4], [0.08, 0.92], [0.3, 0.7]])
    texts = ["a", "b", "c", "d", "e", "f"]
    pseudo = select_pseudo_labels(probabilities, texts, ["x", "y"], confidence=0.9, max_per_class=2)
    # x: a, b, c pass (0.95, 0.97, 0.99); the cap keeps the two most confident, c and b; y: only e passes
    assert list(zip(pseudo.texts, pseudo.labels)) == [("b", "x"), ("c", "x"), ("e", "y")]
    assert pseudo.per_class == {"x": 2, "y": 1} and pseudo.pool_size == 6
    with pytest.raises(ValueError, match="probabilities must be"):
        select_pseudo_labels(probabilities[:, :1], texts, ["x", "y"], 0.9, 2)


def test_margin_pseudo_labels_need_a_clear_lead_and_respect_the_cap():
    scores = np.array([[2.0, -1.0, 0.5],   # x leads by 1.5
                       [0.2, 0.1, -3.0],   # x leads by 0.1: too close
                       [3.0, -2.0, -2.0],  # x leads by 5.0
                       [1.0, 0.0, -1.0],   # x leads by 1.0
                       [-1.0, 4.0, 0.0],   # y leads by 4.0
                       [-5.0, -4.0, -4.5]])  # y leads by 0.5 though every score is negative
    texts = ["a", "b", "c", "d", "e", "f"]
    pseudo = select_by_margin(scores, texts, ["x", "y", "z"], min_margin=0.3, max_per_class=2)
    # x: a (1.5), c (5.0) and d (1.0) pass, the cap keeps c and a; y: e and f; z: none; in pool order
    assert list(zip(pseudo.texts, pseudo.labels)) == [("a", "x"), ("c", "x"), ("e", "y"), ("f", "y")]
    assert pseudo.per_class == {"x": 2, "y": 2, "z": 0} and pseudo.pool_size == 6
    assert select_by_margin(scores, texts, ["x", "y", "z"], 0.0, 10).texts == texts  # every lead > 0
    with pytest.raises(ValueError, match="scores must be"):
        select_by_margin(scores[:, :2], texts, ["x", "y", "z"], 0.0, 2)


def test_classical_scores_follow_the_task_label_order():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    texts = ["lost bag", "bag missing", "refund please", "want my money back", "great crew", "lovely crew"]
    gold = ["baggage", "baggage", "refund", "refund", "praise", "praise"]
    pipeline = make_pipeline(TfidfVectorizer(), LinearSVC(random_state=0)).fit(texts, gold)
    order = ["refund", "praise", "baggage", "other"]  # the task's order, not sklearn's sorted classes_
    scores = classical_scores(pipeline, ["my bag is lost", "refund my money"], order)
    assert scores.shape == (2, 4) and np.isneginf(scores[:, 3]).all()  # a label the model never saw
    assert [order[i] for i in scores.argmax(axis=1)] == ["baggage", "refund"]
    assert [order[i] for i in scores.argmax(axis=1)] == list(pipeline.predict(["my bag is lost", "refund my money"]))
    # a two-class model has one score column; it becomes (-s, s) in the task's order
    binary = make_pipeline(TfidfVectorizer(), LinearSVC(random_state=0)).fit(texts[:4], gold[:4])
    two = classical_scores(binary, ["lost bag", "refund please"], ["refund", "baggage"])
    assert [["refund", "baggage"][i] for i in two.argmax(axis=1)] == ["baggage", "refund"]
    assert np.allclose(two[:, 0], -two[:, 1])


def test_the_student_gets_the_teacher_steps_and_about_as_many_validations(tiny_config):
    teacher = dataclasses.replace(tiny_config.finetune.tasks["intent"], epochs=10, batch_size=32, validate_every=1)
    st = SelfTrainingConfig(enabled=True)
    # the pipeline: 2,885 labels + 3,814 pseudo-labels, 10 epochs -> the same ~900 steps in 4 epochs
    assert (default_student_settings(teacher, st, 2885, 6699).epochs,
            default_student_settings(teacher, st, 2885, 6699).validate_every) == (4, 1)
    assert default_student_settings(teacher, dataclasses.replace(st, student_epochs=7), 2885, 6699).epochs == 7
    # a 1 % share: 910 one-batch epochs validated every 46 (20 validations); the student's 8 epochs over
    # 29 labels + ~4,000 pseudo-labels validate every epoch, not only after the last
    share = dataclasses.replace(teacher, epochs=910, validate_every=46)
    student = default_student_settings(share, st, 29, 4029)
    assert student.epochs == round(910 * 1 / 126) == 7 and student.validate_every == 1


@pytest.mark.parametrize("labeler, pool", [("model", "corpus"), ("classical", "corpus"),
                                           ("classical", "train_beyond_cap")])
def test_self_training_loop_on_a_tiny_model(labeler, pool, fixture_data, tiny_config, tiny_tokenizer_dir, tmp_path):
    from selfsup.text.pretrain_mlm import pretrain_mlm

    pretrain_mlm(dataclasses.replace(tiny_config.pretrain, out_dir=tmp_path / "mlm"),
                 fixture_data / "corpus/unlabeled.jsonl", tiny_tokenizer_dir, tmp_path / "ckpt")
    train_texts, train_labels = read_labelled(fixture_data / "intent/train.csv")
    # train_beyond_cap: the student's labels are half of the 48 training texts, the other half is the pool
    cap = len(train_texts) // 2 if pool == "train_beyond_cap" else 0
    task_cfg = dataclasses.replace(tiny_config.finetune.tasks["intent"], epochs=2, learning_rate=0.01,
                                   max_train_examples=cap)
    # confidence / margin 0: every pool text gets a pseudo-label (capped per class), so the student trains on some
    st = SelfTrainingConfig(enabled=True, labeler=labeler, pool=pool, sources=["tweets"], max_pool=40,
                            confidence=0.0, min_margin=0.0, max_per_class=5)
    out = tmp_path / "out" / "pretrained"
    asked = []

    def student_cfg(examples: int):  # e.g. the same optimizer steps as the teacher (benchmarks/self_training.py)
        asked.append(examples)
        return dataclasses.replace(task_cfg, epochs=1)

    result, report = self_train("intent", task_cfg, st, tiny_config.finetune.loop, tiny_config.pretrain.model,
                                fixture_data / "intent", tiny_config.data.tasks["intent"].labels,
                                fixture_data / "corpus/unlabeled.jsonl", tiny_tokenizer_dir, tmp_path / "mlm", out,
                                student_cfg=student_cfg, classical=tiny_config.finetune.classical)
    labelled = cap or len(train_texts)
    assert asked == [labelled + report["pseudo_labels"]]  # the student's examples: labels + pseudo-labels
    assert (report["teacher_epochs"], report["student_epochs"]) == (2, 1) and report["labeler"] == labeler
    saved = json.loads((out / "self_training.json").read_text())
    assert saved["chosen"] == report["chosen"] in ("teacher", "student")
    assert 0 < report["pseudo_labels"] <= 5 * 8 and report["pseudo_labels"] == sum(report["pseudo_per_class"].values())
    if pool == "train_beyond_cap":
        assert report["pool"] == len(train_texts) - cap
    else:
        assert 0 < report["pool"] <= 40
    best = max(report["teacher_val_macro_f1"], report["student_val_macro_f1"])
    assert result.val_macro_f1 == best  # the better one on validation is kept
    assert (out / "model.safetensors").exists()
    assert [p.name for p in out.parent.iterdir()] == ["pretrained"], "no work folder left behind"


def test_classical_labeler_needs_the_classical_grid(fixture_data, tiny_config, tiny_tokenizer_dir, tmp_path):
    st = SelfTrainingConfig(enabled=True, labeler="classical")
    with pytest.raises(ValueError, match="labeler 'classical' needs the classical grid"):
        self_train("intent", tiny_config.finetune.tasks["intent"], st, tiny_config.finetune.loop,
                   tiny_config.pretrain.model, fixture_data / "intent", tiny_config.data.tasks["intent"].labels,
                   fixture_data / "corpus/unlabeled.jsonl", tiny_tokenizer_dir, tmp_path / "mlm", tmp_path / "out")
    assert not (tmp_path / "out").exists()
