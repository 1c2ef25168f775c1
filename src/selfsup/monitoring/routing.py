"""Customer-service routing: turn a deployed intent classifier's predictions into routed rows and a human queue.

A message the model is unsure of (confidence under ``route.min_confidence``) is still routed — the intent is the
best guess a person starts from — but also goes to the ``needs_human`` queue with the runner-up intent as a hint.
"""

from __future__ import annotations

ROUTED_FIELDS = ["id", "text", "intent", "confidence", "runner_up", "needs_human"]


def needs_human(confidence: float, min_confidence: float) -> bool:
    """The routing rule (the flow and the service share it): a person looks at what the model is unsure of."""
    return confidence < min_confidence


def route(ids: list[str], texts: list[str], predictions, min_confidence: float) -> tuple[list[dict], list[dict]]:
    """Every message with its intent and confidence; those under ``min_confidence`` also go to the human queue,
    with the runner-up intent as a hint."""
    routed, human_queue = [], []
    for msg_id, text, p in zip(ids, texts, predictions):
        ranked = sorted(p.scores.items(), key=lambda kv: -kv[1])
        row = {"id": msg_id, "text": text, "intent": p.label, "confidence": f"{p.confidence:.4f}",
               "runner_up": ranked[1][0] if len(ranked) > 1 else "",
               "needs_human": needs_human(p.confidence, min_confidence)}
        routed.append(row)
        if row["needs_human"]:
            human_queue.append(row)
    return routed, human_queue
