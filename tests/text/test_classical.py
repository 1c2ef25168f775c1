"""The classical arm (TF-IDF + linear model) on the committed fixture slice: deterministic, chosen on validation,
better than the majority class, and saved / loaded whole."""

import json
from collections import Counter

import pytest

from selfsup.config import ClassicalConfig, ConfigError, config_from_dict
from selfsup.metrics import classification_scores
from selfsup.text.classical import fit_classical, linear_model, load_classical, train_classical, vectorizer
from selfsup.text.data import read_labelled

SMALL_GRID = ClassicalConfig(features=["word", "char"], models=["linear_svc", "logreg"], c_grid=[0.3, 3.0],
                             class_weights=["none", "balanced"])


def _scores(pipeline, texts, labels):
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    return classification_scores([index[x] for x in labels], [index[p] for p in pipeline.predict(texts)])


def test_classical_arm_beats_the_majority_class_and_is_deterministic(fixture_data):
    texts, labels = read_labelled(fixture_data / "topic" / "train.csv")
    val_texts, val_labels = read_labelled(fixture_data / "topic" / "validation.csv")
    test_texts, test_labels = read_labelled(fixture_data / "topic" / "test.csv")
    pipeline, result = fit_classical(texts, labels, val_texts, val_labels, SMALL_GRID, seed=1)
    majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
    assert _scores(pipeline, test_texts, test_labels)["accuracy"] > majority + 0.2
    # every combination was tried and the kept one is the best on validation
    assert len(result.grid) == 2 * 2 * 2 * 2
    assert result.val_macro_f1 == max(row["val_macro_f1"] for row in result.grid)
    again, result_again = fit_classical(texts, labels, val_texts, val_labels, SMALL_GRID, seed=1)
    assert list(again.predict(test_texts)) == list(pipeline.predict(test_texts))
    assert (result_again.features, result_again.model, result_again.c) == (result.features, result.model, result.c)


def test_train_classical_uses_the_capped_training_set_and_saves_atomically(fixture_data, tmp_path):
    out = tmp_path / "classical" / "intent"
    result = train_classical(ClassicalConfig(c_grid=[1.0]), fixture_data / "intent", 40, seed=3, out_dir=out)
    assert result.train_examples == 40
    assert sorted(p.name for p in out.iterdir()) == ["model.joblib", "training.json"]
    assert json.loads((out / "training.json").read_text())["val_macro_f1"] == result.val_macro_f1
    texts, _ = read_labelled(fixture_data / "intent" / "test.csv")
    assert set(load_classical(out).predict(texts)) <= set(read_labelled(fixture_data / "intent" / "train.csv")[1])
    assert not list(out.parent.glob(".*")), "no staging folder left behind"


def test_unknown_feature_set_or_model_is_rejected():
    with pytest.raises(ValueError, match="features must be"):
        vectorizer("bytes", 1)
    with pytest.raises(ValueError, match="model must be"):
        linear_model("forest", 1.0, "none", 0)
    with pytest.raises(ConfigError, match="finetune.classical.c_grid"):
        config_from_dict({"finetune": {"classical": {"c_grid": [-1.0]}}})
