"""Routing: every message gets its intent; the ones the model is unsure of also go to the human queue."""

from selfsup.monitoring.routing import ROUTED_FIELDS, route
from selfsup.serve.predict import Prediction


def test_low_confidence_messages_also_go_to_the_human_queue_with_a_hint():
    predictions = [Prediction("x", "baggage", 0.9, {"baggage": 0.9, "other": 0.1}),
                   Prediction("y", "other", 0.4, {"baggage": 0.35, "other": 0.4, "praise": 0.25})]
    routed, queue = route(["1", "2"], ["x", "y"], predictions, 0.5)
    assert [r["needs_human"] for r in routed] == [False, True]
    assert queue == [routed[1]] and routed[1]["runner_up"] == "baggage"
    assert routed[0] == {"id": "1", "text": "x", "intent": "baggage", "confidence": "0.9000", "runner_up": "other",
                         "needs_human": False}
    assert all(list(row) == ROUTED_FIELDS for row in routed)


def test_the_threshold_is_inclusive_and_a_single_class_has_no_runner_up():
    routed, queue = route(["1"], ["x"], [Prediction("x", "other", 0.5, {"other": 0.5})], 0.5)
    assert queue == [] and routed[0]["runner_up"] == ""
