"""The inbox protocol both flows share: which files are batches, and where a handled or rejected batch goes."""

import csv

from selfsup.config import BatchRules
from selfsup.monitoring.inbox import inbox_batches, mark_processed, quarantine, table_rules, write_csv


def test_batches_are_the_csv_files_in_name_order(tmp_path):
    assert inbox_batches(tmp_path / "not-there") == []
    names = [f"2026-01-{day:02d}.csv" for day in (7, 3, 11, 1, 9, 5, 2, 10)]
    for name in [*names, "notes.txt"]:
        (tmp_path / name).write_text("text\nhi\n")
    (tmp_path / "folder.csv").mkdir()
    assert [p.name for p in inbox_batches(tmp_path)] == sorted(names)


def test_batch_rules_drop_the_per_class_minimum():
    rules = table_rules(BatchRules(min_rows=5, min_chars=3, max_chars=80, max_duplicate_rate=0.25))
    assert (rules.min_chars, rules.max_chars, rules.max_duplicate_rate, rules.min_per_class) == (3, 80, 0.25, 0)


def test_quarantine_moves_the_batch_and_writes_its_reasons(tmp_path):
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    batch = inbox / "b1.csv"
    batch.write_text("text\n\n")
    target = quarantine(batch, state, ["row 1: empty", "too few rows"])
    assert target == state / "quarantine/b1.csv" and target.read_text() == "text\n\n" and not batch.exists()
    assert (state / "quarantine/b1.csv.reason.txt").read_text() == "row 1: empty\ntoo few rows\n"


def test_a_batch_name_seen_before_is_kept_beside_the_first(tmp_path):
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    (inbox / "b1.csv").write_text("first\n")
    first = mark_processed(inbox / "b1.csv", state)
    (inbox / "b1.csv").write_text("second\n")
    second = mark_processed(inbox / "b1.csv", state)
    assert first == state / "processed/b1.csv" and first.read_text() == "first\n"
    assert second != first and second.name.startswith("b1.") and second.suffix == ".csv"
    assert second.read_text() == "second\n" and inbox_batches(inbox) == []


def test_write_csv_round_trips_and_leaves_no_temporary_file(tmp_path):
    rows = [{"id": "1", "text": 'a "quoted", text', "flag": True}, {"id": "2", "text": "line\nbreak", "flag": False}]
    path = write_csv(tmp_path / "out/rows.csv", rows, ["id", "text", "flag"])
    assert path.read_bytes().startswith(b"id,text,flag\n1,")
    with path.open(newline="", encoding="utf-8") as handle:
        back = list(csv.DictReader(handle))
    assert back == [{k: str(v) for k, v in row.items()} for row in rows]
    assert [p.name for p in path.parent.iterdir()] == ["rows.csv"]
