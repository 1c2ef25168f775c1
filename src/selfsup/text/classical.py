"""The classical baseline a practitioner tries first, read top to bottom: TF-IDF n-grams + a linear classifier.

    train.csv (the same capped, stratified sample the neural arms train on)
      --> TF-IDF features, sublinear tf: word 1-2-grams | char 2-5-grams within word boundaries | both
      --> LogisticRegression | LinearSVC, with C and class weighting from a grid
    every combination is fitted on train and scored on validation.csv (macro-F1); the best one is saved.

No test data is read here: the test split is the ``evaluate`` stage's, where this arm is scored beside the
pretrained and from-scratch transformers.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selfsup.config import ClassicalConfig
from selfsup.fileio import replace_dir, staging_dir
from selfsup.metrics import classification_scores
from selfsup.text.data import cap_stratified, read_labelled

MODEL_FILE = "model.joblib"


@dataclass
class ClassicalResult:
    features: str
    model: str
    c: float
    class_weight: str
    val_accuracy: float
    val_macro_f1: float
    train_examples: int
    wall_seconds: float
    grid: list[dict] = field(default_factory=list)  # every combination tried, with its validation scores


def vectorizer(features: str, min_df: int):
    """The TF-IDF feature extractor for one feature set (``word``, ``char`` or ``word+char``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=min_df, sublinear_tf=True, lowercase=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=min_df, sublinear_tf=True, lowercase=True)
    if features == "word":
        return word
    if features == "char":
        return char
    if features == "word+char":
        return FeatureUnion([("word", word), ("char", char)])
    raise ValueError(f"features must be word, char or word+char, got {features!r}")


def linear_model(model: str, c: float, class_weight: str, seed: int):
    """A linear classifier: ``logreg`` (multinomial logistic regression) or ``linear_svc`` (one-vs-rest SVM)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    weight = None if class_weight == "none" else class_weight
    if model == "logreg":
        return LogisticRegression(C=c, class_weight=weight, max_iter=2000, random_state=seed)
    if model == "linear_svc":
        return LinearSVC(C=c, class_weight=weight, random_state=seed)
    raise ValueError(f"model must be logreg or linear_svc, got {model!r}")


def fit_classical(texts: list[str], labels: list[str], val_texts: list[str], val_labels: list[str],
                  cfg: ClassicalConfig, seed: int):
    """Fit every grid combination on ``texts`` and keep the best on validation macro-F1 (ties: the earlier one in
    grid order, so the result is deterministic). Returns ``(pipeline, result)``; labels are the raw strings."""
    from sklearn.pipeline import Pipeline

    start = time.perf_counter()
    label_names = sorted(set(labels))
    label_id = {label: i for i, label in enumerate(label_names)}
    val_true = [label_id.get(label, -1) for label in val_labels]
    grid, best = [], None
    for features in cfg.features:
        # the features do not depend on the classifier: vectorize once per feature set
        extractor = vectorizer(features, cfg.min_df)
        train_x = extractor.fit_transform(texts)
        val_x = extractor.transform(val_texts)
        for model, c, class_weight in itertools.product(cfg.models, cfg.c_grid, cfg.class_weights):
            classifier = linear_model(model, c, class_weight, seed).fit(train_x, labels)
            val_pred = [label_id[p] for p in classifier.predict(val_x)]
            scores = classification_scores(val_true, val_pred)
            row = {"features": features, "model": model, "c": c, "class_weight": class_weight,
                   "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"]}
            grid.append(row)
            if best is None or row["val_macro_f1"] > best[0]["val_macro_f1"]:
                best = (row, extractor, classifier)
    row, extractor, classifier = best
    pipeline = Pipeline([("tfidf", extractor), ("classifier", classifier)])
    result = ClassicalResult(row["features"], row["model"], row["c"], row["class_weight"], row["val_accuracy"],
                             row["val_macro_f1"], len(texts), time.perf_counter() - start, grid)
    return pipeline, result


def fit_on_splits(cfg: ClassicalConfig, data_dir: Path, max_train_examples: int, seed: int):
    """``fit_classical`` on ``data_dir/train.csv`` (capped like the neural arms: same seed, same examples), chosen on
    ``validation.csv``. Returns ``(pipeline, result)``."""
    texts, labels = read_labelled(data_dir / "train.csv")
    texts, labels = cap_stratified(texts, labels, max_train_examples, seed)
    val_texts, val_labels = read_labelled(data_dir / "validation.csv")
    return fit_classical(texts, labels, val_texts, val_labels, cfg, seed)


def train_classical(cfg: ClassicalConfig, data_dir: Path, max_train_examples: int, seed: int,
                    out_dir: Path) -> ClassicalResult:
    """``fit_on_splits``, then save ``model.joblib`` + ``training.json`` to ``out_dir`` atomically."""
    import joblib

    pipeline, result = fit_on_splits(cfg, data_dir, max_train_examples, seed)
    staging = staging_dir(out_dir)
    joblib.dump(pipeline, staging / MODEL_FILE)
    (staging / "training.json").write_text(json.dumps(asdict(result), indent=1))
    replace_dir(staging, out_dir)
    return result


def load_classical(folder: Path):
    """The fitted scikit-learn pipeline saved by ``train_classical`` (``.predict(texts) -> label strings``)."""
    import joblib

    return joblib.load(Path(folder) / MODEL_FILE)
