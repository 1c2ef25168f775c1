"""Classification metrics shared by every task's evaluation (scikit-learn's reference implementations)."""

from __future__ import annotations


def classification_scores(y_true: list[int], y_pred: list[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score  # the reference implementation

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def _macro_f1_rows(y_true, y_pred, num_classes: int):
    """Macro-F1 of every row of ``y_true, y_pred [B, N]`` (int arrays) -> ``[B]``, as scikit-learn computes it:
    the mean over the classes present in that row's truth or predictions, 0 for a class never predicted right."""
    import numpy as np

    f1_sum = np.zeros(len(y_true))
    present = np.zeros(len(y_true))
    for c in range(num_classes):
        true_c, pred_c = y_true == c, y_pred == c
        tp = (true_c & pred_c).sum(axis=1)
        denominator = true_c.sum(axis=1) + pred_c.sum(axis=1)  # 2 tp + fp + fn
        f1_sum += np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
        present += denominator > 0
    return f1_sum / np.maximum(present, 1)


def bootstrap_macro_f1(y_true: list[int], predictions: dict[str, list[int]], reference: str,
                       resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of test macro-F1 (the test examples are resampled with replacement, the same resample for
    every arm): a 95 % percentile interval for each arm, and for ``reference`` minus each other arm the interval of
    the difference and the share of resamples where ``reference`` is ahead. A difference whose interval contains 0
    is a tie at this test-set size."""
    import numpy as np

    truth = np.asarray(y_true)
    num_classes = int(max(truth.max(), *(max(p) for p in predictions.values()))) + 1
    index = np.random.default_rng(seed).integers(0, len(truth), size=(resamples, len(truth)))
    scores = {arm: _macro_f1_rows(truth[index], np.asarray(pred)[index], num_classes)
              for arm, pred in predictions.items()}
    out = {arm: _interval(s) for arm, s in scores.items()}
    for arm in predictions:
        if arm != reference:
            difference = scores[reference] - scores[arm]
            out[f"{reference}_minus_{arm}"] = {**_interval(difference), "share_ahead": float((difference > 0).mean())}
    return out


def _interval(samples) -> dict[str, float]:
    import numpy as np

    return {"macro_f1_low95": float(np.percentile(samples, 2.5)), "macro_f1_high95": float(np.percentile(samples, 97.5))}
