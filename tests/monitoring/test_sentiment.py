"""The negative-surge rule against a hand computation, and the history, segment and report helpers."""

import math

import pytest

from selfsup.config import MonitorConfig
from selfsup.monitoring.sentiment import (
    append_history, check_surge, history_row, read_history, segment_shares, write_report,
)


def _h(rows, negative, surge=False):
    return {"rows": rows, "negative": negative, "surge": surge}


CFG = MonitorConfig(window=3, min_baseline_batches=2, z_threshold=3.0, min_increase=0.10)


def test_warming_up_until_enough_baseline_batches():
    check = check_surge([_h(100, 30)], 90, 100, CFG)
    assert not check.surge and check.baseline_share is None and "warming up" in check.explanation


def test_z_score_matches_the_formula_and_surge_needs_both_conditions():
    history = [_h(100, 30), _h(100, 40), _h(100, 35)]
    check = check_surge(history, 60, 100, CFG)
    p0 = 105 / 300
    assert check.baseline_share == pytest.approx(p0)
    assert check.z == pytest.approx((0.60 - p0) / math.sqrt(p0 * (1 - p0) / 100))
    assert check.surge
    # significant but too small to matter: a large batch with +5 points
    small = check_surge(history, int(0.40 * 10000), 10000, CFG)
    assert small.z > 3 and not small.surge


def test_window_and_surges_are_excluded_from_the_baseline():
    history = [_h(100, 10), _h(100, 90), _h(100, 30), _h(100, 99, surge=True), _h(100, 30)]
    check = check_surge(history, 30, 100, CFG)
    # the last 3 non-surge batches: 90, 30, 30 (the surge is skipped, the oldest falls out of the window)
    assert check.baseline_batches == 3 and check.baseline_share == pytest.approx(0.50)


def test_zero_baseline_and_bad_arguments():
    assert check_surge([_h(50, 0), _h(50, 0)], 20, 50, CFG).surge
    assert not check_surge([_h(50, 0), _h(50, 0)], 0, 50, CFG).surge
    with pytest.raises(ValueError):
        check_surge([], 5, 0, CFG)
    with pytest.raises(ValueError):
        check_surge([], 6, 5, CFG)


def test_history_round_trip_and_segments(tmp_path):
    check = check_surge([], 3, 10, CFG)
    segments = segment_shares(["a", "a", "b", None], ["negative", "neutral", "negative", "negative"], "negative")
    assert segments == {"a": {"rows": 2, "negative": 1, "share": 0.5}, "b": {"rows": 1, "negative": 1, "share": 1.0}}
    append_history(tmp_path, history_row("b1.csv", check, 10, 3, 4, segments))
    append_history(tmp_path, history_row("b2.csv", check, 10, 3, 4, {}))
    rows = read_history(tmp_path)
    assert [r["batch"] for r in rows] == ["b1.csv", "b2.csv"] and rows[0]["model_version"] == "4"
    assert rows[0]["share"] == "0.300000" and rows[0]["surge"] == "False" and rows[0]["baseline_share"] == ""
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == (
        "batch,scored_at,rows,negative,share,baseline_share,baseline_batches,z,surge,model_version,segments")
    # the history read back is what the rule judges the next batch against
    assert check_surge(rows, 9, 10, CFG).baseline_share == pytest.approx(0.3)


def test_report_marks_surges_and_lists_quarantined_batches(tmp_path):
    history = [_h(100, 30), _h(100, 32)]
    for i, h in enumerate(history):
        append_history(tmp_path, history_row(f"b{i}.csv", check_surge(history[:i], h["negative"], 100, CFG), 100,
                                             h["negative"], 1, {}))
    surge = check_surge(read_history(tmp_path), 90, 100, CFG)
    append_history(tmp_path, history_row("b2.csv", surge, 100, 90, 1, {"airline": {"rows": 100, "share": 0.9}}))
    report = write_report(read_history(tmp_path), [{"batch": "bad.csv", "reason": "row 1: empty"}],
                          tmp_path / "report.md", CFG).read_text()
    lines = report.splitlines()
    assert [line for line in lines if "**SURGE**" in line] == [
        f"| b2.csv | 100 | 90.0% | 31.0% | {surge.z:.4f} | **SURGE** | v1 | airline 90% (100) |"]
    assert "| b0.csv | 100 | 30.0% | - | - |  | v1 |  |" in lines
    assert lines[-2:] == ["", "- bad.csv: row 1: empty"]
