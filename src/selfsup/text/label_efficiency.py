"""Label efficiency: what pretraining buys at each share of the training labels, against scratch and classical.

For every (task, share of the labels, seed) the three arms are trained on exactly the same stratified sample
(``cap_stratified`` with that seed: the neural arms through ``finetune``'s own cap, the classical arm directly) and
scored on the whole test split:

    pretrained   the pipeline's MLM encoder, fine-tuned (``selfsup.text.finetune``), and self-trained on unlabeled
                 texts where the task enables it (``selfsup.text.self_training``): the pipeline's own recipe
    scratch      the same architecture from random weights, same settings
    classical    TF-IDF + linear model, its grid chosen on validation (``selfsup.text.classical``)

A smaller label set is trained for more epochs, so every share gets the same optimizer steps as the committed
setting (``epochs`` x batches of the full label set), optionally capped (``max_steps``), and is validated at most
about 20 times (``validation_interval``), not after each of its many short epochs. The summary gives, per task and
share, each arm's mean ± std over seeds and the error ratios ``(1 - F1_scratch) / (1 - F1_pretrained)`` and
``(1 - F1_classical) / (1 - F1_pretrained)``: above 1, pretraining makes fewer errors.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from selfsup.text.evaluate import ARMS  # pretrained, scratch, classical
from selfsup.text.finetune import run_epochs


VALIDATIONS_PER_RUN = 20  # the committed settings validate 2-10 times per run; 20 points find the best epoch as well


def validation_interval(epochs: int, committed_epochs: int) -> int:
    """Validate every N epochs so that a run of ``epochs`` validates at most ``VALIDATIONS_PER_RUN`` times, or once per
    epoch of the committed setting if that is more (runs as long as the committed one validate after every epoch)."""
    return math.ceil(epochs / max(VALIDATIONS_PER_RUN, committed_epochs))


def share_settings(task_cfg, full_examples: int, examples: int, max_steps: int = 0, labelled: int | None = None):
    """``task_cfg`` for a run on ``examples`` training examples: the committed setting's optimizer steps
    (``run_epochs``, capped by ``max_steps``) and at most ``VALIDATIONS_PER_RUN`` validations. ``labelled``: how many
    of the examples are labels (``max_train_examples``); default all (self-training adds pseudo-labels to them)."""
    epochs = run_epochs(full_examples, examples, task_cfg.batch_size, task_cfg.epochs, max_steps)
    return dataclasses.replace(task_cfg, max_train_examples=examples if labelled is None else labelled, epochs=epochs,
                               validate_every=validation_interval(epochs, task_cfg.epochs))


def measure(cfg, tasks: list[str], fractions: list[float], seeds: list[int], max_steps: int,
            evaluated: dict[str, dict] | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Every run of the grid, one row per (task, fraction, seed, arm): labels, epochs, test accuracy and macro-F1.

    ``evaluated``: the evaluate stage's metrics per task; its scores stand in for the share 1.0 at the pipeline's
    own seed (``finetune.loop.seed``), which would retrain the very same models."""
    import torch

    from selfsup.metrics import classification_scores
    from selfsup.text.classical import fit_classical
    from selfsup.text.chunking import split_texts
    from selfsup.text.data import cap_stratified, read_labelled
    from selfsup.text.model import load_classifier, predict_logits
    from selfsup.text.self_training import train_pretrained_or_scratch
    from selfsup.text.tokenizer import load_tokenizer

    evaluated = evaluated or {}
    loop = dataclasses.replace(cfg.finetune.loop, progress=False)
    tokenizer = load_tokenizer(Path(cfg.tokenizer.out_dir))
    rows = []
    for task in tasks:
        spec, task_cfg = cfg.data.tasks[task], cfg.finetune.tasks[task]
        data_dir = Path(spec.dir)
        train_texts, train_labels = read_labelled(data_dir / "train.csv")
        full = task_cfg.max_train_examples or len(train_texts)
        full = min(full, len(train_texts))
        per_text = len(split_texts(train_texts, task_cfg.chunk_words, task_cfg.max_chunks)[0]) / len(train_texts)
        val_texts, val_labels = read_labelled(data_dir / "validation.csv")
        test_texts, gold = read_labelled(data_dir / "test.csv")
        label_id = {label: i for i, label in enumerate(spec.labels)}
        y_true = [label_id[g] for g in gold]
        for fraction in fractions:
            n = max(len(spec.labels), round(full * fraction))
            # a share of 1 % takes hundreds of one-batch epochs: validating after each would cost more than the
            # training itself
            # steps count batches of training sequences: a task read in pieces has ``per_text`` of them per label
            run_cfg = share_settings(task_cfg, round(full * per_text), round(n * per_text), max_steps, labelled=n)
            for seed in seeds:
                base = {"task": task, "fraction": fraction, "seed": seed, "labels": n, "epochs": run_cfg.epochs}
                if fraction == 1.0 and seed == cfg.finetune.loop.seed and task in evaluated:
                    rows += [{**base, "epochs": task_cfg.epochs, "arm": arm, **evaluated[task][arm]} for arm in ARMS]
                    log(f"{task} {fraction:g} seed {seed}: the evaluate stage's models")
                    continue
                scores = {}
                run_loop = dataclasses.replace(loop, seed=seed)
                with tempfile.TemporaryDirectory() as scratch:
                    for init in ("pretrained", "scratch"):
                        out = Path(scratch) / init
                        train_pretrained_or_scratch(task, init, run_cfg, run_loop, cfg.pretrain.model, data_dir,
                                                    spec.labels, Path(cfg.data.corpus), Path(cfg.tokenizer.out_dir),
                                                    Path(cfg.pretrain.out_dir), out,
                                                    classical=cfg.finetune.classical)
                        logits = predict_logits(load_classifier(out), tokenizer, test_texts, task_cfg.max_length,
                                                torch.device("cpu"), chunk_words=task_cfg.chunk_words,
                                                max_chunks=task_cfg.max_chunks)
                        scores[init] = classification_scores(y_true, logits.argmax(-1).tolist())
                texts, labels = cap_stratified(train_texts, train_labels, n, seed)
                pipeline, _ = fit_classical(texts, labels, val_texts, val_labels, cfg.finetune.classical, seed)
                scores["classical"] = classification_scores(y_true, [label_id[p] for p in pipeline.predict(test_texts)])
                rows += [{**base, "arm": arm, **scores[arm]} for arm in ARMS]
                log(f"{task} {fraction:g} ({n:,} labels, {run_cfg.epochs} epochs) seed {seed}: macro-F1 " +
                    ", ".join(f"{arm} {scores[arm]['macro_f1']:.3f}" for arm in ARMS))
    return rows


def summarize(rows: list[dict]) -> dict:
    """``{task: {fraction: {arm: {mean, std, runs}, error_ratio_scratch, error_ratio_classical, labels}}}`` on test
    macro-F1; std is the sample standard deviation over seeds (0 for one seed)."""
    summary: dict = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        summary[task] = {}
        for fraction in dict.fromkeys(r["fraction"] for r in rows if r["task"] == task):
            entry: dict = {}
            for arm in ARMS:
                values = [r["macro_f1"] for r in rows if (r["task"], r["fraction"], r["arm"]) == (task, fraction, arm)]
                entry[arm] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1
                              else 0.0, "runs": len(values)}
            error = {arm: 1.0 - entry[arm]["mean"] for arm in ARMS}
            entry["error_ratio_scratch"] = error["scratch"] / max(error["pretrained"], 1e-9)
            entry["error_ratio_classical"] = error["classical"] / max(error["pretrained"], 1e-9)
            entry["labels"] = next(r["labels"] for r in rows if (r["task"], r["fraction"]) == (task, fraction))
            summary[task][f"{fraction:g}"] = entry
    return summary


def plot(summary: dict, path: Path) -> None:
    """One panel per task: test macro-F1 (mean ± std over seeds) of each arm against the number of labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), constrained_layout=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        shares = sorted(summary[task], key=float)
        labels = [summary[task][s]["labels"] for s in shares]
        for arm, style in zip(ARMS, ("o-", "s--", "d-.")):
            means = np.array([summary[task][s][arm]["mean"] for s in shares])
            stds = np.array([summary[task][s][arm]["std"] for s in shares])
            ax.errorbar(labels, means, yerr=stds, fmt=style, capsize=3, label=arm)
        ax.set_xscale("log")
        ax.set(title=task, xlabel="labelled training examples", ylabel="test macro-F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("label efficiency: pretrained vs from scratch vs classical (TF-IDF + linear)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
