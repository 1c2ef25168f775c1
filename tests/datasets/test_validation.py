"""Each validation rule against a deliberately broken copy of a small slice of the real data."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from selfsup.config import load_config
from selfsup.datasets.suites import RULES
from selfsup.datasets.validation import DataFileError, validate_data

from conftest import run_cli

TASKS = ("intent", "sentiment", "topic")
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def small_data(built_data, tmp_path_factory) -> Path:
    """Up to 3 rows per label of every split of every task, and 30 corpus documents, from the real build."""
    root = tmp_path_factory.mktemp("small")
    for task in TASKS:
        for split in SPLITS:
            with (built_data / task / f"{split}.csv").open(encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle))
            kept, per_label = [], {}
            for row in rows:
                if per_label.get(row["label"], 0) < 3:
                    per_label[row["label"]] = per_label.get(row["label"], 0) + 1
                    kept.append(row)
            out = root / "data" / task / f"{split}.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, ["text", "label"], lineterminator="\n")
                writer.writeheader()
                writer.writerows(kept)
    corpus = root / "data/corpus/unlabeled.jsonl"
    corpus.parent.mkdir(parents=True)
    with (built_data / "corpus/unlabeled.jsonl").open(encoding="utf-8") as handle:
        corpus.write_text("".join(next(handle) for _ in range(30)), encoding="utf-8")
    return root


@pytest.fixture
def workdir(small_data, tmp_path, repo_root) -> Path:
    """A fresh copy of the small data with a params.yaml whose thresholds fit it."""
    shutil.copytree(small_data / "data", tmp_path / "data")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    for rules in params["validate"]["tables"].values():
        rules["min_per_class"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(repo_root / "presets", tmp_path / "presets")  # params.yaml names its preset file
    return tmp_path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def _set_line(path: Path, index: int, content: str) -> None:
    lines = _lines(path)
    lines[index] = content
    path.write_text("\n".join(lines), encoding="utf-8")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "artifacts" not in p.parts}


def _validate(workdir: Path):
    import os

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return validate_data(load_config("params.yaml"))
    finally:
        os.chdir(cwd)


def test_the_real_slice_passes(workdir):
    outcome = _validate(workdir)
    assert outcome.success, outcome.error_message(10)
    metrics = json.loads((workdir / "artifacts/validation/metrics.json").read_text())
    assert metrics["passed"] == 1 and metrics["failing_rows"] == 0
    assert metrics["rule_checks"] > 40


def _break_bad_label(w):
    row = _lines(w / "data/intent/train.csv")[2]
    _set_line(w / "data/intent/train.csv", 2, row.rsplit(",", 1)[0] + ",lost_luggage")
    return "data/intent/train.csv", "row 2", "label_in_set", "lost_luggage"


def _break_empty_text(w):
    _set_line(w / "data/sentiment/validation.csv", 3, '"   ",neutral')
    return "data/sentiment/validation.csv", "row 3", "non_empty", None


def _break_too_long(w):
    _set_line(w / "data/intent/test.csv", 4, '"' + "delayed again " * 40 + '",flight_disruption')
    return "data/intent/test.csv", "row 4", "length_bounds", "delayed again"


def _break_too_short(w):
    _set_line(w / "data/topic/train.csv", 1, '"Short article.",tech')
    return "data/topic/train.csv", "row 1", "length_bounds", "Short article."


def _break_utf8_csv(w):
    path = w / "data/intent/validation.csv"
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'"caf\xe9 closed at gate B9, flight delayed",flight_disruption'
    path.write_bytes(b"\n".join(lines))
    return "data/intent/validation.csv", "row 2", "utf8", "caf\ufffd closed"


def _break_utf8_corpus(w):
    path = w / "data/corpus/unlabeled.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[6] = b'{"source": "tweets", "id": "x", "text": "na\xefve passenger here"}'
    path.write_bytes(b"\n".join(lines))
    return "data/corpus/unlabeled.jsonl", "line 7", "utf8", "na\ufffdve"


def _break_json(w):
    _set_line(w / "data/corpus/unlabeled.jsonl", 4, '{"source": "tweets", "text": "unterminated')
    return "data/corpus/unlabeled.jsonl", "line 5", "well_formed", "unterminated"


def _break_csv_fields(w):
    _set_line(w / "data/sentiment/train.csv", 5, "one,too,many,fields")
    return "data/sentiment/train.csv", "row 5", "well_formed", "one,too,many,fields"


def _break_duplicate(w):
    path = w / "data/sentiment/train.csv"
    lines = _lines(path)
    text, label = lines[1].rsplit(",", 1)
    _set_line(path, 6, text.upper() + "," + label)
    return "data/sentiment/train.csv", "row 6", "duplicate_rate", None


def _break_duplicate_corpus(w):
    path = w / "data/corpus/unlabeled.jsonl"
    _set_line(path, 9, _lines(path)[2])
    return "data/corpus/unlabeled.jsonl", "line 10", "duplicate_rate", None


def _break_leakage(w):
    test_row = _lines(w / "data/topic/test.csv")[1]
    _set_line(w / "data/topic/train.csv", 2, test_row)
    return "data/topic/test.csv", "row 1", "split_leakage", None


def _break_test_in_corpus(w):
    text = next(csv.DictReader((w / "data/sentiment/test.csv").open(encoding="utf-8")))["text"]
    with (w / "data/corpus/unlabeled.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"source": "tweets", "id": "leak", "text": text}) + "\n")
    return "data/corpus/unlabeled.jsonl", "line 31", "no_test_text_in_corpus", text[:20]


def _break_min_per_class(w):
    path = w / "data/intent/validation.csv"
    kept = [line for line in _lines(path) if not line.endswith(",loyalty")]
    path.write_text("\n".join(kept), encoding="utf-8")
    return "data/intent/validation.csv", "label 'loyalty'", "min_per_class", 0


BREAKERS = [
    _break_bad_label, _break_empty_text, _break_too_long, _break_too_short, _break_utf8_csv, _break_utf8_corpus,
    _break_json, _break_csv_fields, _break_duplicate, _break_duplicate_corpus, _break_leakage,
    _break_test_in_corpus, _break_min_per_class,
]


def test_every_declared_rule_has_a_broken_fixture():
    covered = {b.__name__ for b in BREAKERS}
    rules = {r.name for r in RULES}
    expected = {"label_in_set", "non_empty", "length_bounds", "utf8", "well_formed", "duplicate_rate",
                "split_leakage", "no_test_text_in_corpus", "min_per_class",
                "no_nul"}  # its broken fixtures: tests/datasets/test_bad_data.py (nul_byte.csv, nul_byte.jsonl)
    assert rules == expected, "a new rule needs a broken fixture below"
    assert len(covered) == len(BREAKERS)


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda b: b.__name__.removeprefix("_break_"))
def test_broken_fixture_names_file_row_and_rule(workdir, breaker):
    file, where, rule, value = breaker(workdir)
    before = _snapshot(workdir)
    outcome = _validate(workdir)
    assert not outcome.success
    matching = [f for f in outcome.failures if f.file == file and f.where == where and f.rule == rule]
    assert matching, outcome.error_message(20)
    if isinstance(value, str):
        assert value in str(matching[0].value)
    elif value is not None:
        assert matching[0].value == value
    message = outcome.error_message(50)
    assert f"{file} {where}: rule '{rule}' broken" in message
    # the full GE result is saved, and nothing but the reports was written
    results = json.loads((workdir / "artifacts/validation/ge_results.json").read_text())
    assert any(not r["success"] for r in results)
    assert (workdir / "artifacts/validation/report.html").read_text().count("FAILED") >= 1
    assert _snapshot(workdir) == before
    assert json.loads((workdir / "artifacts/validation/metrics.json").read_text())["passed"] == 0


def test_missing_column_is_a_clear_error(workdir):
    _set_line(workdir / "data/intent/train.csv", 0, "text,intent")
    with pytest.raises(DataFileError, match=r"data/intent/train.csv row 0 \(header\): rule 'columns'"):
        _validate(workdir)


def test_cli_exits_nonzero_and_prints_file_row_rule(workdir):
    _break_bad_label(workdir)
    _break_leakage(workdir)
    result = run_cli(["validate"], cwd=workdir)
    assert result.returncode == 1
    assert "data/intent/train.csv row 2: rule 'label_in_set' broken" in result.stderr
    assert "rule 'split_leakage' broken" in result.stderr
    assert "ge_results.json" in result.stderr
    clean = run_cli(["validate", "data.tasks.intent.labels=[flight_disruption, baggage, booking_refund, "
                     "staff_service, inflight, loyalty, praise, other, lost_luggage]",
                     "data.tasks.topic.dir=data/topic_missing"], cwd=workdir)
    assert clean.returncode == 1
    assert "data/topic_missing/train.csv: labelled file not found" in clean.stderr
