"""Customer-service routing: turn a deployed intent classifier's predictions into routed rows and a human queue.

A message the model is unsure of (confidence under ``route.min_confidence``) is still routed — the intent is the
best guess a person starts from — but also goes to the ``needs_human`` queue with the runner-up intent as a hint.
"""

from __future__ import annotations

ROUTED_FIELDS = ["id", "text", "intent", "confidence", "runner_up", "needs_human"]


def route(ids: list[str], texts: list[str], predictions, min_confidence: float) -> tuple[list[dict], list[dict]]:
    """Every message with its intent and confidence; those under ``min_confidence`` also go to the human queue,
    with the runner-up intent as a hint."""
    routed, needs_human = [], []
    for msg_id, text, p in zip(ids, texts, predictions):
        ranked = sorted(p.scores.items(), key=lambda kv: -kv[1])
        row = {"id": msg_id, "text": text, "intent": p.label, "confidence": f"{p.confidence:.4f}",
               "runner_up": ranked[1][0] if len(ranked) > 1 else "", "needs_human": p.confidence < min_confidence}
        routed.append(row)
        if row["needs_human"]:
            needs_human.append(row)
    return routed, needs_human
