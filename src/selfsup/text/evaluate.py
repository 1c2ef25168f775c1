"""Test-set evaluation of a task's three arms: metrics, bootstrap intervals, per-class report, confusion matrices,
loss curves.

``evaluate_task`` scores, on the same test split, the pretrained-then-fine-tuned model, the same architecture
trained from scratch and the classical arm (TF-IDF + linear model; all three trained on the same labels), and
writes, under ``out_dir``:

    metrics.json                 accuracy and macro-F1 of each arm, paired-bootstrap 95 % intervals, and what
                                 pretraining bought over scratch and over the classical arm (DVC metrics)
    report_<arm>.json            scikit-learn's per-class precision / recall / F1
    confusion_<arm>.csv          actual,predicted rows (DVC confusion plot)
    confusion.png                the three confusion matrices side by side
    loss_curves.png / loss.csv   fine-tuning loss of the two neural arms, and validation macro-F1 per epoch
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from selfsup.metrics import bootstrap_macro_f1, classification_scores
from selfsup.text.model import INITS

ARMS = (*INITS, "classical")  # pretrained, scratch, classical


def per_class_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    from sklearn.metrics import classification_report

    return classification_report(y_true, y_pred, labels=list(range(len(labels))), target_names=labels,
                                 output_dict=True, zero_division=0)


def confusion(y_true: list[int], y_pred: list[int], n: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(n)))


def plot_confusions(matrices: dict[str, np.ndarray], labels: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(6 * len(matrices), 5.5), constrained_layout=True)
    for ax, (name, matrix) in zip(np.atleast_1d(axes), matrices.items()):
        norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(name)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curves(trainings: dict[str, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, training in trainings.items():
        steps = [h["step"] for h in training["history"]]
        losses = np.array([h["loss"] for h in training["history"]])
        window = max(1, len(losses) // 30)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1 :], smooth, label=name)
        right.plot([e["epoch"] for e in training["epochs"]], [e["val_macro_f1"] for e in training["epochs"]],
                   marker="o", label=name)
    left.set_xlabel("step")
    left.set_ylabel("training loss (moving average)")
    right.set_xlabel("epoch")
    right.set_ylabel("validation macro-F1")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_task(task: str, labels: list[str], test_csv: Path, models_dir: Path, classical_dir: Path,
                  max_length: int, out_dir: Path, device, seed: int = 0, *, chunk_words: int = 0,
                  max_chunks: int = 1) -> dict:
    """Score the three arms of ``task`` on ``test_csv``; write the files listed in the module docstring. The
    neural arms read long texts as ``predict_logits`` does with ``chunk_words`` / ``max_chunks``."""
    from selfsup.text.classical import load_classical
    from selfsup.text.data import read_labelled
    from selfsup.text.model import load_classifier, predict_logits
    from selfsup.text.tokenizer import load_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    texts, gold = read_labelled(test_csv)
    label_id = {label: i for i, label in enumerate(labels)}
    y_true = [label_id[g] for g in gold]
    predictions, trainings = {}, {}
    for init in INITS:
        folder = models_dir / init
        model = load_classifier(folder).to(device)
        tokenizer = load_tokenizer(folder)
        predictions[init] = predict_logits(model, tokenizer, texts, max_length, device, chunk_words=chunk_words,
                                           max_chunks=max_chunks).argmax(-1).tolist()
        trainings[init] = json.loads((folder / "training.json").read_text())
    predictions["classical"] = [label_id[p] for p in load_classical(classical_dir).predict(texts)]

    metrics: dict = {"test_examples": len(texts)}
    matrices = {}
    for arm in ARMS:
        y_pred = predictions[arm]
        metrics[arm] = classification_scores(y_true, y_pred)
        (out_dir / f"report_{arm}.json").write_text(json.dumps(per_class_report(y_true, y_pred, labels), indent=1))
        with (out_dir / f"confusion_{arm}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["actual", "predicted"])
            writer.writerows((labels[t], labels[p]) for t, p in zip(y_true, y_pred))
        matrices[f"{arm} (acc {metrics[arm]['accuracy']:.3f}, macro-F1 {metrics[arm]['macro_f1']:.3f})"] = \
            confusion(y_true, y_pred, len(labels))
    metrics["pretraining_gain"] = {k: metrics["pretrained"][k] - metrics["scratch"][k] for k in ("accuracy", "macro_f1")}
    metrics["gain_over_classical"] = {k: metrics["pretrained"][k] - metrics["classical"][k]
                                      for k in ("accuracy", "macro_f1")}
    metrics["bootstrap"] = bootstrap_macro_f1(y_true, predictions, reference="pretrained", seed=seed)
    plot_confusions(matrices, labels, f"{task}: test-set confusion matrices", out_dir / "confusion.png")
    plot_loss_curves(trainings, f"{task}: pretrained vs from scratch", out_dir / "loss_curves.png")
    with (out_dir / "loss.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["step", *INITS])
        longest = max(len(t["history"]) for t in trainings.values())
        for i in range(longest):
            writer.writerow([i + 1, *[f"{t['history'][i]['loss']:.5f}" if i < len(t["history"]) else ""
                                      for t in trainings.values()]])
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics
