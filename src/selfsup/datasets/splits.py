"""How a labelled set is deduplicated and split into train / validation / test, and how two annotation passes
are compared.

Everything here is a pure function of the examples' texts and labels: no clock, no random state, no hash seed, so
the same input set gives the same splits on every machine and in any input order.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from selfsup.datasets.clean import dedup_key

SPLIT_SEED = "selfsup-splits-v1"
SPLITS = ("train", "validation", "test")
# Fractions (validation, test); the rest is train. The intent set is small, so it keeps more for evaluation: a fifth
# of 4,440 annotated messages gives a test split of about 890, with at least 25 of the rarest intents (inflight,
# loyalty), so that test macro-F1 can tell models apart.
SPLIT_FRACTIONS = {"intent": (0.15, 0.2), "sentiment": (0.1, 0.1), "topic": (0.1, 0.1)}


@dataclass
class Example:
    text: str
    label: str
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = dedup_key(self.text)


def dedup_labelled(examples: list[tuple[str, str, float]]) -> tuple[list[Example], int, int]:
    """Merge texts that are duplicates under ``dedup_key``.

    The label of a duplicate group is the one with the highest total annotator confidence (a confidence-weighted
    vote; ties go to the alphabetically first label so the result never depends on input order). The text kept is
    the first occurrence. Returns ``(examples, duplicates_dropped, groups_with_conflicting_labels)``.
    """
    groups: dict[str, list[tuple[str, str, float]]] = {}
    for text, label, confidence in examples:
        groups.setdefault(dedup_key(text), []).append((text, label, confidence))
    out, conflicts = [], 0
    for members in groups.values():
        votes: dict[str, float] = defaultdict(float)
        for _, label, confidence in members:
            votes[label] += confidence
        if len(votes) > 1:
            conflicts += 1
        # rounded so that float summation order cannot turn a tie into a win
        label = min(votes, key=lambda lab: (-round(votes[lab], 6), lab))
        out.append(Example(members[0][0], label))
    return out, len(examples) - len(out), conflicts


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SPLIT_SEED}:{key}".encode()).hexdigest()


def stratified_split(examples: list[Example], fractions: tuple[float, float]) -> dict[str, list[Example]]:
    """Deterministic stratified split: within each label, order the examples by a salted hash of their text key
    and cut off ``round(n * fraction)`` for validation and test. Same input set -> same splits, whatever the order
    or the machine. Each split is written sorted by the same hash so files do not reveal the source order."""
    val_frac, test_frac = fractions
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda ex: _rank(ex.key))
        n_test = round(len(members) * test_frac)
        n_val = round(len(members) * val_frac)
        splits["test"].extend(members[:n_test])
        splits["validation"].extend(members[n_test : n_test + n_val])
        splits["train"].extend(members[n_test + n_val :])
    for name in SPLITS:
        splits[name].sort(key=lambda ex: _rank(ex.key))
    return splits


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa of two annotations of the same items (scikit-learn's implementation)."""
    from sklearn.metrics import cohen_kappa_score  # lazy: only the build needs it

    return float(cohen_kappa_score(first, second))


def per_class_kappa(first: list[str], second: list[str]) -> dict[str, float]:
    """Cohen's kappa of each label taken one-vs-rest (did both passes give this label or not), labels sorted."""
    from sklearn.metrics import cohen_kappa_score

    return {label: float(cohen_kappa_score([x == label for x in first], [y == label for y in second]))
            for label in sorted(set(first) | set(second))}
