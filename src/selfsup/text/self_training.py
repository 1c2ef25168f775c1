"""Semi-supervised fine-tuning by self-training, read top to bottom: unlabeled in-domain texts used a second way,
after masked-language-model pretraining (Yarowsky 1995; Xie et al. 2020 without the noise; with the classical
labeler, co-training's second view: Blum & Mitchell 1998).

    1. plain      fine-tune the pretrained encoder on the labels (``finetune``)
    2. pool       ``pool: corpus``: the corpus documents of ``sources`` (e.g. tweets), minus every text of this
                  task's labelled splits (train, validation, test; the corpus already holds no test text of any
                  task, which the validate stage checks); ``pool: train_beyond_cap``: the training texts that
                  ``max_train_examples`` leaves out, labels ignored, minus the kept training, validation and test
                  texts; either way a seeded sample of ``max_pool``
    3. pseudo     the labeler classifies the pool: ``model``, the plain model of step 1 (a text keeps its label when
                  the top probability is >= ``confidence``), or ``classical``, TF-IDF + a linear model fitted on the
                  same labels (kept when its top decision score leads the runner-up by more than ``min_margin``);
                  at most ``max_per_class`` per class, the most confident first
    4. student    fine-tune the pretrained encoder again, from the same start, on labels + pseudo-labels
                  (validation on the real labels only)
    5. choose     the student replaces the plain model only if its validation macro-F1 is higher

The from-scratch and classical arms never see unlabeled data: they show what the labels alone give.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from selfsup.config import ClassicalConfig, FinetuneTaskConfig, ModelConfig, SelfTrainingConfig, TrainLoopConfig
from selfsup.fileio import replace_dir


@dataclass
class PseudoLabels:
    texts: list[str]
    labels: list[str]
    pool_size: int
    per_class: dict[str, int]


def unlabeled_pool(corpus: list[tuple[str, str]], sources: list[str], labelled_texts: list[str], max_pool: int,
                   seed: int) -> list[str]:
    """Texts of ``sources`` in the corpus (``(source, text)`` pairs) that are not, up to case and spacing, any
    labelled text of the task; a seeded sample of at most ``max_pool``, in corpus order."""
    from selfsup.datasets.clean import dedup_key

    unknown = sorted(set(sources) - {source for source, _ in corpus})
    if unknown:
        raise ValueError(f"self_training.sources names sources not in the corpus: {unknown}")
    labelled = {dedup_key(text) for text in labelled_texts}
    pool = [text for source, text in corpus if source in sources and dedup_key(text) not in labelled]
    if not pool:  # e.g. sentiment: every corpus tweet is one of its labelled tweets
        raise ValueError(f"self_training.sources {sorted(sources)}: no unlabeled text is left, every one of their "
                         f"corpus texts is a labelled text of this task; use pool 'train_beyond_cap' if the task "
                         f"caps its training labels, name other sources, or leave self-training off")
    return _sample(pool, max_pool, seed)


def beyond_cap_pool(train_texts: list[str], train_labels: list[str], max_train_examples: int,
                    held_out_texts: list[str], max_pool: int, seed: int) -> list[str]:
    """The training texts that the stratified cap (``cap_stratified`` with the fine-tuning's ``max_train_examples``
    and seed) leaves out, as unlabeled texts: their labels are never returned. Texts equal, up to case and spacing,
    to a kept training text or a ``held_out_texts`` one (validation, test) are dropped, repeats kept once; a seeded
    sample of at most ``max_pool``, in file order."""
    from selfsup.datasets.clean import dedup_key
    from selfsup.text.data import cap_stratified

    kept, _ = cap_stratified(train_texts, train_labels, max_train_examples, seed)
    seen = {dedup_key(text) for text in [*kept, *held_out_texts]}
    pool = []
    for text in train_texts:
        key = dedup_key(text)
        if key not in seen:
            seen.add(key)
            pool.append(text)
    if not pool:
        raise ValueError(f"self_training.pool 'train_beyond_cap': max_train_examples ({max_train_examples}) keeps "
                         f"every one of the {len(train_texts)} training texts (or the rest repeat labelled ones), "
                         f"so none is left unlabeled; lower the cap or use pool 'corpus'")
    return _sample(pool, max_pool, seed)


def _sample(pool: list[str], max_pool: int, seed: int) -> list[str]:
    """A seeded sample of at most ``max_pool`` texts, in pool order."""
    if len(pool) <= max_pool:
        return pool
    keep = sorted(random.Random(seed).sample(range(len(pool)), max_pool))
    return [pool[i] for i in keep]


def select_pseudo_labels(probabilities: np.ndarray, texts: list[str], labels: list[str], confidence: float,
                         max_per_class: int) -> PseudoLabels:
    """Confident predictions as labels. ``probabilities``: ``[N, n_labels]`` rows summing to 1. Per class, the texts
    predicted as it with top probability >= ``confidence``, most confident first, at most ``max_per_class``."""
    if probabilities.shape != (len(texts), len(labels)):
        raise ValueError(f"probabilities must be [{len(texts)}, {len(labels)}], got {probabilities.shape}")
    top = probabilities.max(axis=1)
    return select_confident(probabilities.argmax(axis=1), top, top >= confidence, texts, labels, max_per_class)


def select_by_margin(scores: np.ndarray, texts: list[str], labels: list[str], min_margin: float,
                     max_per_class: int) -> PseudoLabels:
    """Pseudo-labels from a linear model's decision scores ``[N, n_labels]`` (any scale): a text keeps its
    top-scoring label when that score leads the runner-up by more than ``min_margin``; per class the largest leads
    first, at most ``max_per_class``."""
    if scores.shape != (len(texts), len(labels)) or len(labels) < 2:
        raise ValueError(f"scores must be [{len(texts)}, {len(labels)}] with >= 2 labels, got {scores.shape}")
    ranked = np.sort(scores, axis=1)
    margin = ranked[:, -1] - ranked[:, -2]  # [N]
    return select_confident(scores.argmax(axis=1), margin, margin > min_margin, texts, labels, max_per_class)


def select_confident(predicted: np.ndarray, strength: np.ndarray, passes: np.ndarray, texts: list[str],
                     labels: list[str], max_per_class: int) -> PseudoLabels:
    """Per class, the texts ``predicted`` ([N] label indices) as it that ``pass`` ([N] bool), the largest
    ``strength`` ([N]) first, at most ``max_per_class``; returned in pool order."""
    chosen: list[int] = []
    per_class = {}
    for index, label in enumerate(labels):
        members = np.flatnonzero((predicted == index) & passes)
        members = members[np.argsort(-strength[members], kind="stable")][:max_per_class]
        per_class[label] = len(members)
        chosen += members.tolist()
    chosen.sort()
    return PseudoLabels([texts[i] for i in chosen], [labels[predicted[i]] for i in chosen], len(texts), per_class)


def classical_scores(pipeline, texts: list[str], labels: list[str]) -> np.ndarray:
    """The fitted classical pipeline's decision scores for ``texts``, columns in ``labels`` order: ``[N, n_labels]``
    (a label the pipeline never saw scores -inf; a two-class model's one score becomes (-s, s))."""
    raw = np.asarray(pipeline.decision_function(texts), dtype=np.float64)
    known = list(pipeline.classes_)
    if raw.ndim == 1:  # binary: the score of classes_[1]
        raw = np.stack([-raw, raw], axis=1)
    scores = np.full((len(texts), len(labels)), -np.inf)
    for column, label in enumerate(labels):
        if label in known:
            scores[:, column] = raw[:, known.index(label)]
    return scores


def self_train(task: str, cfg: FinetuneTaskConfig, st: SelfTrainingConfig, loop: TrainLoopConfig,
               model_cfg: ModelConfig, data_dir: Path, labels: list[str], corpus_path: Path, tokenizer_dir: Path,
               pretrained_dir: Path, out_dir: Path, tracker=None, teacher_copy: Path | None = None,
               student_cfg: Callable[[int], FinetuneTaskConfig] | None = None,
               classical: ClassicalConfig | None = None):
    """Plain model ("teacher"), pseudo-labels, student, choice (the module docstring); the chosen model goes to
    ``out_dir`` with a ``self_training.json`` report. Returns the chosen model's ``FinetuneResult`` and the report.
    ``classical``: the classical grid, required with ``st.labeler == "classical"``.
    ``teacher_copy``: also keep the plain model there (benchmarks compare it with the student on test).
    ``student_cfg(examples)``: the student's settings for its number of training examples (labels + pseudo-labels);
    default: the teacher's settings with ``st.student_epochs`` epochs, or the teacher's optimizer steps where that
    is 0 (``finetune.run_epochs``)."""
    import shutil

    from selfsup.text.data import read_corpus, read_labelled
    from selfsup.text.finetune import finetune

    if st.labeler == "classical" and classical is None:
        raise ValueError("self_training.labeler 'classical' needs the classical grid (finetune.classical)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-self-training-") as work:
        work = Path(work)
        # the pool first: settings that leave it empty fail before any training
        train_texts, train_labels = read_labelled(data_dir / "train.csv")
        held_out = [text for split in ("validation", "test") for text in read_labelled(data_dir / f"{split}.csv")[0]]
        if st.pool == "train_beyond_cap":
            pool = beyond_cap_pool(train_texts, train_labels, cfg.max_train_examples, held_out, st.max_pool,
                                   loop.seed)
        else:
            pool = unlabeled_pool(read_corpus(corpus_path), st.sources, train_texts + held_out, st.max_pool,
                                  loop.seed)
        teacher = finetune(task, "pretrained", cfg, loop, model_cfg, data_dir, labels, tokenizer_dir, pretrained_dir,
                           work / "teacher", tracker)
        if st.labeler == "classical":
            pseudo = _classical_pseudo_labels(st, classical, cfg, loop, data_dir, labels, pool)
        else:
            pseudo = _model_pseudo_labels(st, cfg, loop, work / "teacher", labels, pool)

        # the student sees the teacher's (capped) labels plus the pseudo-labels
        examples = teacher.train_examples + len(pseudo.texts)
        if student_cfg is not None:
            student_settings = student_cfg(examples)
        else:
            student_settings = default_student_settings(cfg, st, teacher.train_examples, examples)
        student = finetune(task, "pretrained", student_settings, loop, model_cfg, data_dir, labels, tokenizer_dir,
                           pretrained_dir, work / "student", tracker, extra=(pseudo.texts, pseudo.labels))
        chosen = "student" if student.val_macro_f1 > teacher.val_macro_f1 else "teacher"
        report = {"chosen": chosen, "teacher_val_macro_f1": teacher.val_macro_f1,
                  "student_val_macro_f1": student.val_macro_f1, "labeler": st.labeler, "pool": pseudo.pool_size,
                  "pseudo_labels": len(pseudo.texts), "pseudo_per_class": pseudo.per_class,
                  "teacher_epochs": cfg.epochs, "student_epochs": student_settings.epochs, "settings": asdict(st)}
        if teacher_copy is not None:
            shutil.copytree(work / "teacher", teacher_copy)
        (work / chosen / "self_training.json").write_text(json.dumps(report, indent=1))
        replace_dir(work / chosen, out_dir)
    return (student if chosen == "student" else teacher), report


def default_student_settings(cfg: FinetuneTaskConfig, st: SelfTrainingConfig, teacher_examples: int,
                             student_examples: int) -> FinetuneTaskConfig:
    """The teacher's settings with ``st.student_epochs`` epochs, or, where that is 0, the teacher's optimizer steps
    over the student's examples (``finetune.run_epochs``); validated about as often as the teacher (the
    label-efficiency grid's many short epochs validate every N), so the student too is kept at its best epoch."""
    from selfsup.text.finetune import run_epochs

    epochs = st.student_epochs or run_epochs(teacher_examples, student_examples, cfg.batch_size, cfg.epochs,
                                             max_steps=0)
    return replace(cfg, epochs=epochs, validate_every=max(1, round(cfg.validate_every * epochs / cfg.epochs)))


def _model_pseudo_labels(st: SelfTrainingConfig, cfg: FinetuneTaskConfig, loop: TrainLoopConfig, model_dir: Path,
                         labels: list[str], pool: list[str]) -> PseudoLabels:
    """The fine-tuned model in ``model_dir`` labels the pool; confident predictions become pseudo-labels."""
    import torch

    from selfsup.runtime import setup
    from selfsup.text.model import load_classifier, predict_logits
    from selfsup.text.tokenizer import load_tokenizer

    device = setup(loop)
    logits = predict_logits(load_classifier(model_dir).to(device), load_tokenizer(model_dir), pool, cfg.max_length,
                            device, loop.precision, chunk_words=cfg.chunk_words, max_chunks=cfg.max_chunks)
    return select_pseudo_labels(torch.softmax(logits, dim=-1).numpy(), pool, labels, st.confidence,
                                st.max_per_class)


def _classical_pseudo_labels(st: SelfTrainingConfig, classical: ClassicalConfig, cfg: FinetuneTaskConfig,
                             loop: TrainLoopConfig, data_dir: Path, labels: list[str], pool: list[str]) -> PseudoLabels:
    """TF-IDF + linear model fitted (grid chosen on validation) on exactly the student's labels (same cap, same
    seed as ``finetune``) labels the pool; predictions with a clear lead become pseudo-labels."""
    from selfsup.text.classical import fit_on_splits

    pipeline, _ = fit_on_splits(classical, data_dir, cfg.max_train_examples, loop.seed)
    return select_by_margin(classical_scores(pipeline, pool, labels), pool, labels, st.min_margin, st.max_per_class)


def train_pretrained_or_scratch(task: str, init: str, task_cfg: FinetuneTaskConfig, loop: TrainLoopConfig,
                                model_cfg: ModelConfig, data_dir: Path, labels: list[str], corpus_path: Path,
                                tokenizer_dir: Path, pretrained_dir: Path, out_dir: Path, tracker=None,
                                classical: ClassicalConfig | None = None):
    """The pipeline's recipe for one neural arm: the pretrained arm self-trained where ``task_cfg.self_training``
    enables it, otherwise plain ``finetune``. Returns ``(FinetuneResult, self-training report or None)``; used by the
    finetune stage and the label-efficiency grid, so both train the same way. ``classical``: the classical grid
    (``finetune.classical``), for the classical labeler."""
    from selfsup.text.finetune import finetune

    if init == "pretrained" and task_cfg.self_training.enabled:
        return self_train(task, task_cfg, task_cfg.self_training, loop, model_cfg, data_dir, labels, corpus_path,
                          tokenizer_dir, pretrained_dir, out_dir, tracker, classical=classical)
    return finetune(task, init, task_cfg, loop, model_cfg, data_dir, labels, tokenizer_dir, pretrained_dir, out_dir,
                    tracker), None
