"""Broken text inputs (``tests/fixtures/bad/``, plus large ones generated here): each, injected alone into a small
valid data tree, makes the validate stage fail with a message naming the file, the row (or line) and the rule, in
bounded time and memory, writing nothing but its reports. A UTF-8 byte-order mark and CRLF line endings pass.

File-level faults (empty file, wrong header, UTF-16) fail before Great Expectations is imported; the row-level ones
run the real suites, so those tests are ``slow`` like the other GE tests (tests/vision/test_validate.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from selfsup.config import load_config

from conftest import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD = FIXTURES / "bad"
TRAIN, VALIDATION, CORPUS = "data/intent/train.csv", "data/intent/validation.csv", "data/corpus/unlabeled.jsonl"


def make_tree(root: Path, repo_root: Path) -> Path:
    """A small valid data tree at ``root``: the fixture corpus and intent splits, a params.yaml declaring only the
    intent task (min_per_class 2: the fixture splits have 3 to 6 rows per label; tracking off), the presets, and
    stand-ins for downstream outputs, which validation must never touch."""
    shutil.copytree(FIXTURES / "data/corpus", root / "data/corpus")
    shutil.copytree(FIXTURES / "data/intent", root / "data/intent")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["tasks"] = {"intent": params["data"]["tasks"]["intent"]}
    params["validate"]["tables"] = {"intent": {**params["validate"]["tables"]["intent"], "min_per_class": 2}}
    params["finetune"]["tasks"] = {"intent": params["finetune"]["tasks"]["intent"]}
    params["gate"]["tasks"] = {k: v for k, v in params["gate"].get("tasks", {}).items() if k == "intent"}
    params["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(repo_root / "presets", root / "presets")
    for name, content in (("models/tokenizer/tokenizer.json", "{}"), ("models/onnx/intent/model.onnx", "onnx"),
                          ("artifacts/tokenizer/metrics.json", '{"vocab_size": 1}')):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


@pytest.fixture
def tree(tmp_path, repo_root) -> Path:
    return make_tree(tmp_path / "repo", repo_root)


def snapshot(root: Path) -> dict[str, str]:
    """Every file but the validation reports, by content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and "validation" not in p.relative_to(root).parts[:2]}


def validate(root: Path):
    from selfsup.datasets.validation import validate_data

    cwd = os.getcwd()
    os.chdir(root)
    try:
        return validate_data(load_config("params.yaml"))
    finally:
        os.chdir(cwd)


def inject(root: Path, fixture: str, target: str) -> None:
    (root / target).write_bytes((BAD / fixture).read_bytes())


def test_bad_fixtures_are_current_and_cover_the_issue():
    """The committed files are what ``make_bad.py`` writes from the clean fixtures (so they stay in step with
    them), and every one of them is used by a test here or in test_bad_images.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_bad", BAD / "make_bad.py")
    make_bad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_bad)
    expected = make_bad.all_files()
    committed = {str(p.relative_to(BAD)): p.read_bytes() for p in BAD.rglob("*") if p.is_file() and p.suffix != ".py"}
    assert committed == expected, "run python tests/fixtures/bad/make_bad.py"
    used = {f[0] for f in FILE_FAULTS + ROW_FAULTS} | {"bom_crlf.csv", "bom_crlf.jsonl"}
    assert used == {name for name in expected if not name.startswith("images/")}  # images: test_bad_images.py
    assert len(expected) >= 20


# --------------------------------------------------------------------------------------------------- file level

# (fixture in tests/fixtures/bad, file it replaces, what the message must say: the file, the row or line, the rule)
FILE_FAULTS = [
    ("empty.csv", TRAIN, "row 0 (whole file): rule 'non_empty' broken — the file is empty"),
    ("empty.jsonl", CORPUS, "row 0 (whole file): rule 'non_empty' broken — the corpus file is empty"),
    ("whitespace_only.csv", TRAIN, "row 0 (header): rule 'columns' broken — expected the columns text,label"),
    ("header_only.csv", TRAIN, "row 1: rule 'non_empty' broken — the file has a header but no rows"),
    ("binary_garbage.csv", TRAIN, "line 1: rule 'well_formed' broken — the CSV cannot be parsed past this line "
                                  "(a carriage return (\\r) inside an unquoted field"),
    ("utf16.csv", TRAIN, "row 0 (whole file): rule 'utf8' broken — the file is UTF-16 encoded"),
    ("utf16.jsonl", CORPUS, "row 0 (whole file): rule 'utf8' broken — the file is UTF-16 encoded"),
    ("missing_column.csv", TRAIN, "row 0 (header): rule 'columns' broken — expected the columns text,label, "
                                  "got ['text']"),
    ("extra_columns.csv", TRAIN, "row 0 (header): rule 'columns' broken — expected the columns text,label, "
                                 "got ['text', 'label', 'source']"),
    ("wrong_delimiter.csv", TRAIN, "row 0 (header): rule 'columns' broken — expected the columns text,label, got "
                                   "['text;label'] (the header looks semicolon-separated"),
]


@pytest.mark.parametrize("fixture, target, expected", FILE_FAULTS, ids=[f[0] for f in FILE_FAULTS])
def test_bad_file_is_rejected_before_any_row_check(tree, fixture, target, expected):
    from selfsup.datasets.validation import DataFileError

    inject(tree, fixture, target)
    before = snapshot(tree)
    start = time.perf_counter()
    with pytest.raises(DataFileError) as err:
        validate(tree)
    assert f"{target} {expected}" in str(err.value)
    assert time.perf_counter() - start < 5, "a file-level fault is found before any suite runs"
    assert snapshot(tree) == before
    assert not (tree / "artifacts/validation").exists(), "no report: the stage stopped before validating rows"


def test_bad_file_cli_exits_nonzero_fast_without_importing_great_expectations(tree):
    inject(tree, "utf16.csv", TRAIN)
    start = time.perf_counter()
    result = run_cli(["validate"], cwd=tree)
    assert result.returncode == 1, result.stderr
    assert f"data validation FAILED: {TRAIN} row 0 (whole file): rule 'utf8' broken" in result.stderr
    assert time.perf_counter() - start < 30  # the interpreter and selfsup start; GE (~7 s to import) never loads


# ---------------------------------------------------------------------------------------------------- row level

# (fixture, file it replaces, the failing file, where, rule, a part of the value or of the explanation)
ROW_FAULTS = [
    ("latin1.csv", TRAIN, TRAIN, "row 3", "utf8", "caf\ufffd"),
    ("nul_byte.csv", TRAIN, TRAIN, "row 4", "no_nul", "\x00"),
    ("missing_field.csv", TRAIN, TRAIN, "row 6", "well_formed", ""),
    ("extra_fields.csv", TRAIN, TRAIN, "row 5", "well_formed", ",extra"),
    ("unterminated_quote.csv", TRAIN, TRAIN, "row 7", "well_formed", ""),
    ("label_outside_set.csv", TRAIN, TRAIN, "row 2", "label_in_set", "lost_luggage"),
    ("label_case.csv", TRAIN, TRAIN, "row 2", "label_in_set", "did you mean"),
    ("label_whitespace.csv", TRAIN, TRAIN, "row 2", "label_in_set", "did you mean"),
    ("one_example_class.csv", TRAIN, TRAIN, "label 'loyalty'", "min_per_class", ""),
    ("duplicated_rows.csv", TRAIN, TRAIN, "row 8", "duplicate_rate", ""),
    ("invisible_only.csv", TRAIN, TRAIN, "row 9", "non_empty", "\u200b"),
    ("cross_split.csv", VALIDATION, VALIDATION, "row 1", "split_leakage", ""),
    ("quoted_newline_then_bad_label.csv", TRAIN, TRAIN, "row 4", "label_in_set", "lost_luggage"),
    ("whitespace_only.jsonl", CORPUS, CORPUS, "line 1", "well_formed", ""),
    ("binary_garbage.jsonl", CORPUS, CORPUS, "line 6", "utf8", ""),
    ("nul_byte.jsonl", CORPUS, CORPUS, "line 4", "no_nul", "\x00"),
    ("invisible_only.jsonl", CORPUS, CORPUS, "line 5", "non_empty", "\u200b"),
    ("duplicated_rows.jsonl", CORPUS, CORPUS, "line 7", "duplicate_rate", ""),
    ("not_an_object.jsonl", CORPUS, CORPUS, "line 3", "well_formed", "a list is not a document"),
]


def _assert_named(outcome, root: Path, file: str, where: str, rule: str, part: str) -> None:
    assert not outcome.success
    matching = [f for f in outcome.failures if f.file == file and f.where == where and f.rule == rule]
    assert matching, outcome.error_message(30)
    assert part in f"{matching[0].value}{matching[0].explain}", matching[0].message()
    assert f"{file} {where}: rule '{rule}' broken" in outcome.error_message(50)
    metrics = json.loads((root / "artifacts/validation/metrics.json").read_text())
    assert metrics["passed"] == 0 and metrics["failing_rows_by_rule"][rule] >= 1


@pytest.mark.slow  # runs the Great Expectations suites
@pytest.mark.parametrize("fixture, target, file, where, rule, part", ROW_FAULTS, ids=[f[0] for f in ROW_FAULTS])
def test_bad_rows_name_file_row_and_rule(tree, fixture, target, file, where, rule, part):
    inject(tree, fixture, target)
    before = snapshot(tree)
    start = time.perf_counter()
    outcome = validate(tree)
    elapsed = time.perf_counter() - start
    _assert_named(outcome, tree, file, where, rule, part)
    assert snapshot(tree) == before
    assert elapsed < 60, f"validation took {elapsed:.0f} s"  # ~2-4 s here; generous for a loaded 2-core machine


@pytest.mark.slow
def test_bad_labels_differing_in_case_or_spaces_get_a_hint(tree):
    inject(tree, "label_case.csv", TRAIN)
    outcome = validate(tree)
    (failure,) = [f for f in outcome.failures if f.rule == "label_in_set"]
    declared = failure.value.strip().lower()
    assert f"did you mean '{declared}'?" in failure.message()


@pytest.mark.slow
@pytest.mark.parametrize("fixture, target", [("bom_crlf.csv", TRAIN), ("bom_crlf.jsonl", CORPUS)])
def test_bad_looking_but_valid_bom_and_crlf_are_accepted(tree, fixture, target):
    inject(tree, fixture, target)
    assert (BAD / fixture).read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in (BAD / fixture).read_bytes()
    outcome = validate(tree)
    assert outcome.success, outcome.error_message(10)


@pytest.mark.slow
def test_bad_rows_cli_exits_nonzero_naming_file_row_and_rule(tree):
    inject(tree, "label_outside_set.csv", TRAIN)
    before = snapshot(tree)
    result = run_cli(["validate"], cwd=tree)
    assert result.returncode == 1
    assert f"{TRAIN} row 2: rule 'label_in_set' broken" in result.stderr
    assert snapshot(tree) == before


# ---------------------------------------------------------------------------------------- large, generated here

PEAK_RSS = """
import json, os, resource, sys
os.chdir(sys.argv[1])
from selfsup.config import load_config
from selfsup.datasets.validation import DataFileError, validate_data
try:
    outcome = validate_data(load_config("params.yaml"))
    result = {"success": outcome.success, "messages": [f.message() for f in outcome.failures[:20]],
              "failing_rows": outcome.failing_rows, "summary": outcome.summary}
except DataFileError as err:
    result = {"success": False, "messages": [str(err)]}
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def validate_in_subprocess(root: Path) -> dict:
    """Validate ``root`` in a fresh interpreter; its result and its peak resident memory."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(root)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


MB = 2**20


@pytest.mark.slow
def test_bad_single_10mb_line_fails_in_bounded_memory(tree):
    """A 10 MB corpus line and a 10 MB CSV field: both read (the csv module's 128 KiB field limit no longer
    crashes the stage), judged by length_bounds, and cut in every report."""
    lines = (tree / CORPUS).read_text().splitlines(keepends=True)
    huge = json.dumps({"source": "tweets", "id": "huge", "text": "delayed " * (10 * MB // 8)}) + "\n"
    (tree / CORPUS).write_text("".join(lines[:2] + [huge] + lines[2:]))
    rows = (tree / TRAIN).read_text().splitlines(keepends=True)
    (tree / TRAIN).write_text("".join(rows[:5] + ['"' + "lost bag " * (10 * MB // 9) + '",baggage\n'] + rows[5:]))
    small = validate_in_subprocess(make_tree(tree.parent / "small", Path(__file__).resolve().parents[2]))
    result = validate_in_subprocess(tree)
    assert not result["success"]
    assert any(m.startswith(f"{CORPUS} line 3: rule 'length_bounds' broken") for m in result["messages"])
    assert any(m.startswith(f"{TRAIN} row 5: rule 'length_bounds' broken") for m in result["messages"])
    # two 10 MB texts cost at most a few copies of themselves on top of the run over the clean tree
    assert result["peak_rss_mb"] - small["peak_rss_mb"] < 150, (result["peak_rss_mb"], small["peak_rss_mb"])
    for report in ("ge_results.json", "summary.json", "report.html"):
        assert (tree / "artifacts/validation" / report).stat().st_size < 2 * MB, f"{report} holds the whole text"


def write_corpus(path: Path, size: int, duplicate_every: int = 0) -> int:
    """Unique tweet-like JSON lines (or every ``duplicate_every``-th line a repeat) up to ``size`` bytes."""
    import random

    words = (FIXTURES / "data/corpus/unlabeled.jsonl").read_text().split()[:5000]
    written = line_no = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < size:
            line_no += 1
            number = line_no - 1 if duplicate_every and line_no % duplicate_every == 0 else line_no
            rng = random.Random(number)  # the same number, the same text
            text = f"doc {number} " + " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
            line = json.dumps({"source": "tweets", "id": f"g{line_no}", "text": text}) + "\n"
            handle.write(line)
            written += len(line.encode())
    return line_no


@pytest.mark.slow
def test_bad_data_memory_stays_bounded_whatever_the_corpus_size(tmp_path, repo_root):
    """Peak memory of the validate stage over a 10 MB and a 40 MB corpus. Before streaming, validation held every
    row in memory: peak RSS grew by ~11x the corpus (measured: 278 MB for the fixtures, 832 MB with 50 MB of
    corpus). Now it grows by 8 bytes a row (the hashes duplicates are judged by), a fraction of the file."""
    peaks = {}
    for size in (10, 40):
        root = make_tree(tmp_path / f"corpus{size}", repo_root)
        write_corpus(root / CORPUS, size * MB)
        result = validate_in_subprocess(root)
        assert result["success"], result["messages"]
        peaks[size] = result["peak_rss_mb"]
        shutil.rmtree(root)
    growth = peaks[40] - peaks[10]
    assert growth < 0.5 * 30, f"peak RSS grew {growth:.0f} MB for 30 MB more corpus: {peaks}"


@pytest.mark.slow
def test_bad_huge_failure_reports_stay_readable(tmp_path, repo_root):
    """A corpus where every 2nd line repeats the one before: ~60,000 failing rows. The message shows the first few
    and counts the rest; the reports keep the first rows per rule and say how many were left out."""
    root = make_tree(tmp_path / "repo", repo_root)
    lines = write_corpus(root / CORPUS, 12 * MB, duplicate_every=2)
    result = validate_in_subprocess(root)
    assert not result["success"]
    duplicates = lines // 2
    assert result["failing_rows"] == duplicates
    assert result["summary"]["tables"]["corpus"]["rules"]["duplicate_rate"]["unexpected"] == duplicates
    assert len(result["summary"]["failures"]) <= 1000
    assert result["summary"]["failures_left_out"] == duplicates - len(result["summary"]["failures"])
    assert result["messages"][0].startswith(f"{CORPUS} line 2: rule 'duplicate_rate' broken")
    reports = root / "artifacts/validation"
    assert (reports / "ge_results.json").stat().st_size < 1 * MB
    assert (reports / "report.html").stat().st_size < 5 * MB
    ge = json.loads((reports / "ge_results.json").read_text())
    corpus = next(r for r in ge if r["meta"].get("selfsup_rows") == lines)
    duplicate = next(r for r in corpus["results"] if r["expectation_config"]["meta"]["rule"] == "duplicate_rate")
    assert duplicate["result"]["unexpected_count"] == duplicates
    assert len(duplicate["result"]["partial_unexpected_index_list"]) == 100


@pytest.mark.slow
def test_bad_huge_failure_message_counts_what_it_leaves_out(tree):
    from selfsup.datasets.validation import ValidationOutcome

    write_corpus(tree / CORPUS, 1 * MB, duplicate_every=2)
    outcome = validate(tree)
    message = outcome.error_message(10)
    assert isinstance(outcome, ValidationOutcome) and not outcome.success
    assert message.count("rule 'duplicate_rate' broken") == 10
    assert f"... and {outcome.failing_rows - 10:,} more not shown (failing rows by rule: duplicate_rate " in message
