"""The ``validate`` stage: check the corpus and every labelled set before anything trains on them.

``validate_data(cfg)`` reads the files named in ``cfg.data``, turns each into a table (one row per text, plus
derived columns such as ``utf8_valid``, ``is_duplicate``, ``n_splits``), runs the suites declared in
``selfsup.datasets.suites`` through Great Expectations (``selfsup.adapters.gx``, imported only here and only when
validating), and writes to ``cfg.validate.report_dir``:

    metrics.json      passed, failing rows per rule, rows per file (DVC metrics)
    summary.json      per file and rule: success, unexpected / element counts
    ge_results.json   the full Great Expectations validation results
    report.html       the Great Expectations rendering of every result, failures first

It writes nothing else. A failure is returned (and the CLI exits non-zero) with messages that name the file, the
row and the rule for the first failures.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.config import Config, TableRules
from selfsup.datasets.clean import dedup_key
from selfsup.datasets.suites import rules_for
from selfsup.fileio import write_text_atomic


@dataclass
class Table:
    """One batch to validate: column lists of equal length, and where each row came from."""

    name: str  # e.g. "intent/train" or "corpus"
    kind: str  # corpus | labelled | classes | splits
    columns: dict[str, list[Any]]
    locations: list[tuple[str, str]]  # (file, "row 17" / "line 3" / "label 'x'") per row
    rules: TableRules
    labels: list[str] = field(default_factory=list)


@dataclass
class Failure:
    rule: str
    file: str
    where: str
    value: Any
    explain: str

    def message(self) -> str:
        shown = repr(self.value)
        shown = shown if len(shown) <= 90 else shown[:87] + "..."
        return f"{self.file} {self.where}: rule '{self.rule}' broken — {self.explain} (value: {shown})"


@dataclass
class ValidationOutcome:
    success: bool
    failures: list[Failure]
    summary: dict[str, Any]
    report_dir: Path

    def error_message(self, limit: int) -> str:
        lines = [f"data validation FAILED: {len(self.failures)} failing row(s); first {min(limit, len(self.failures))}:"]
        lines += ["  " + f.message() for f in self.failures[:limit]]
        lines.append(f"full Great Expectations results: {self.report_dir / 'ge_results.json'} and {self.report_dir / 'report.html'}")
        return "\n".join(lines)


class DataFileError(ValueError):
    """A data file is missing or lacks a required column; nothing can be validated row by row."""


# ------------------------------------------------------------------------------------------------ reading files


def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


def _text_columns(texts: list[str | None]) -> dict[str, list[Any]]:
    keys = [dedup_key(t) if t is not None else None for t in texts]
    seen: set[str] = set()
    duplicate = []
    for key in keys:
        duplicate.append(key is not None and key in seen)
        if key is not None:
            seen.add(key)
    return {
        "text": texts,
        "text_nonblank": [t if t is not None and t.strip() else None for t in texts],
        "key": keys,
        "is_duplicate": duplicate,
    }


def read_corpus(path: Path, rules: TableRules) -> Table:
    """The JSON-lines corpus as a table; a line that is not valid UTF-8 or JSON becomes a failing row, not a crash."""
    if not path.is_file():
        raise DataFileError(f"{path}: corpus file not found (data.corpus in params.yaml)")
    texts, utf8_ok, well_formed, raws, locations = [], [], [], [], []
    with path.open("rb") as handle:
        for line_no, raw_line in enumerate(handle, start=1):
            line, ok = _decode(raw_line.rstrip(b"\n"))
            text = None
            try:
                record = json.loads(line)
                text = record.get("text") if isinstance(record, dict) else None
                parsed = isinstance(text, str) or text is None
                text = text if isinstance(text, str) else None
            except json.JSONDecodeError:
                parsed = False
            # a JSON \\u escape can smuggle in a lone surrogate: not encodable as UTF-8 either
            if text is not None and ok:
                ok = not any("\ud800" <= ch <= "\udfff" for ch in text)
            texts.append(text)
            utf8_ok.append(ok)
            well_formed.append(parsed)
            raws.append(line[:200])
            locations.append((str(path), f"line {line_no}"))
    columns = _text_columns(texts)
    columns.update(utf8_valid=utf8_ok, well_formed=well_formed, raw=raws)
    return Table("corpus", "corpus", columns, locations, rules)


def read_labelled(path: Path, task: str, rules: TableRules, labels: list[str]) -> Table:
    """A ``text,label`` CSV file as a table. Rows are numbered from 1 after the header."""
    if not path.is_file():
        raise DataFileError(f"{path}: labelled file not found (data.tasks.{task}.dir in params.yaml)")
    raw_bytes = path.read_bytes()
    content = raw_bytes.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header is None or "text" not in header or "label" not in header:
        raise DataFileError(f"{path} row 0 (header): rule 'columns' broken — expected columns text,label, got {header}")
    i_text, i_label = header.index("text"), header.index("label")
    texts, labels_col, utf8_ok, well_formed, raws, locations = [], [], [], [], [], []
    for row_no, row in enumerate(reader, start=1):
        ok_shape = len(row) == len(header)
        ok = all(not any("\udc80" <= ch <= "\udcff" for ch in cell) for cell in row)
        if not ok:  # show the undecodable bytes as U+FFFD from here on
            row = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in row]
        text = row[i_text] if i_text < len(row) else None
        label = row[i_label] if i_label < len(row) else None
        texts.append(text)
        labels_col.append(label)
        utf8_ok.append(ok)
        well_formed.append(ok_shape)
        raws.append(",".join(row)[:200])
        locations.append((str(path), f"row {row_no}"))
    columns = _text_columns(texts)
    columns.update(label=labels_col, utf8_valid=utf8_ok, well_formed=well_formed, raw=raws)
    return Table(f"{task}/{path.stem}", "labelled", columns, locations, rules, labels)


SEGMENT_COLUMNS = ("segment", "topic", "source")  # optional grouping column of an incoming batch, first found wins


def read_batch(path: Path, rules: TableRules) -> Table:
    """An incoming batch (CSV with a ``text`` column; optional ``id`` and a segment column) as a table."""
    if not path.is_file():
        raise DataFileError(f"{path}: batch file not found")
    content = path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header is None or "text" not in header:
        raise DataFileError(f"{path} row 0 (header): rule 'columns' broken — expected a text column, got {header}")
    index = {name: header.index(name) for name in ("text", "id", *SEGMENT_COLUMNS) if name in header}
    segment = next((name for name in SEGMENT_COLUMNS if name in index), None)
    columns: dict[str, list[Any]] = {name: [] for name in ("text", "id", "segment", "utf8_valid", "well_formed", "raw")}
    locations = []
    for row_no, row in enumerate(reader, start=1):
        ok = all(not any("\udc80" <= ch <= "\udcff" for ch in cell) for cell in row)
        if not ok:
            row = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in row]
        cell = lambda name: row[index[name]] if name in index and index[name] < len(row) else None  # noqa: E731
        columns["text"].append(cell("text"))
        columns["id"].append(cell("id") if "id" in index else str(row_no))
        columns["segment"].append(cell(segment) if segment else None)
        columns["utf8_valid"].append(ok)
        columns["well_formed"].append(len(row) == len(header))
        columns["raw"].append(",".join(row)[:200])
        locations.append((str(path), f"row {row_no}"))
    texts = columns.pop("text")
    columns = {**_text_columns(texts), **columns}
    return Table(path.name, "batch", columns, locations, rules)


def validate_batch(path: Path, rules: TableRules, min_rows: int) -> tuple[Table | None, list[Failure]]:
    """Check one incoming batch with the ``batch`` suite; returns the table (None if unreadable) and failures."""
    from selfsup.adapters import gx

    try:
        table = read_batch(path, rules)
    except DataFileError as err:
        return None, [Failure("columns", str(path), "row 0", None, str(err))]
    if len(table.locations) < min_rows:
        return table, [Failure("min_rows", str(path), f"row {len(table.locations)}", len(table.locations),
                               f"the batch has {len(table.locations)} rows, fewer than min_rows={min_rows}")]
    (run,) = gx.run_suites([(table.name, table.columns, [(r, r.kwargs(rules, [])) for r in rules_for("batch", rules)])])
    failures = []
    for result in run.results:
        if not result.success:
            column = table.columns.get(result.rule.column, table.columns["text"])
            for i in result.unexpected_index:
                file, where = table.locations[i]
                failures.append(Failure(result.rule.name, file, where, column[i], result.rule.explain))
    failures.sort(key=lambda f: (_row_order(f.where), f.rule))
    return table, failures


def class_count_table(table: Table, path: Path) -> Table:
    counts = {label: 0 for label in table.labels}
    for label in table.columns["label"]:
        if label in counts:
            counts[label] += 1
    return Table(
        f"{table.name}/classes", "classes",
        {"label": list(counts), "count": list(counts.values()), "text": list(counts)},
        [(str(path), f"label '{label}'") for label in counts], table.rules, table.labels,
    )


def split_leakage_table(task: str, tables: list[Table], rules: TableRules) -> Table:
    splits_of: dict[str, set[str]] = {}
    for t in tables:
        for key in t.columns["key"]:
            if key is not None:
                splits_of.setdefault(key, set()).add(t.name)
    keys, texts, locations = [], [], []
    for t in tables:
        keys += t.columns["key"]
        texts += t.columns["text"]
        locations += t.locations
    n_splits = [len(splits_of.get(k, ())) if k is not None else 0 for k in keys]
    return Table(f"{task}/splits", "splits", {"n_splits": n_splits, "text": texts}, locations, rules)


# --------------------------------------------------------------------------------------------------- the stage


def collect_tables(cfg: Config) -> list[Table]:
    """Every table the suites run over, built from the files named in ``cfg.data``."""
    tables: list[Table] = []
    test_keys: set[str] = set()
    for task, spec in cfg.data.tasks.items():
        rules = cfg.validate.tables.get(task, TableRules())
        split_tables = []
        for split in cfg.data.splits:
            path = Path(spec.dir) / f"{split}.csv"
            table = read_labelled(path, task, rules, spec.labels)
            split_tables.append(table)
            tables += [table, class_count_table(table, path)]
            if split == "test":
                test_keys.update(k for k in table.columns["key"] if k is not None)
        tables.append(split_leakage_table(task, split_tables, rules))
    corpus = read_corpus(Path(cfg.data.corpus), cfg.validate.corpus)
    corpus.columns["in_test_split"] = [k in test_keys for k in corpus.columns["key"]]
    return [corpus, *tables]


def validate_data(cfg: Config) -> ValidationOutcome:
    """Run every suite over the configured data and write the reports; see the module docstring."""
    from selfsup.adapters import gx  # lazy: the core never imports Great Expectations at import time

    tables = collect_tables(cfg)
    runs = gx.run_suites([(t.name, t.columns, [(r, r.kwargs(t.rules, t.labels)) for r in rules_for(t.kind, t.rules)])
                          for t in tables])
    return write_outcome(tables, runs, Path(cfg.validate.report_dir), gx.render_html)


def write_outcome(tables: list[Table], runs: list, report_dir: Path, render_html) -> ValidationOutcome:
    """Turn GE runs over ``tables`` into failures naming file, row and rule, and write the four reports (shared by
    the text ``validate`` and the image ``validate_images`` stages)."""
    failures: list[Failure] = []
    summary: dict[str, Any] = {"success": True, "tables": {}}
    by_name = {t.name: t for t in tables}
    for run in runs:
        table = by_name[run.table]
        entry = summary["tables"].setdefault(run.table, {
            "kind": table.kind, "file": table.locations[0][0] if table.locations else "",
            "rows": len(table.locations), "rules": {}})
        for result in run.results:
            entry["rules"][result.rule.name] = {
                "success": result.success, "unexpected": result.unexpected_count, "elements": result.element_count,
            }
            if result.success:
                continue
            summary["success"] = False
            column = table.columns.get(result.rule.column, table.columns["text"])
            for index in result.unexpected_index:
                file, where = table.locations[index]
                failures.append(Failure(result.rule.name, file, where, column[index], result.rule.explain))
    failures.sort(key=lambda f: (f.file, _row_order(f.where), f.rule))
    write_text_atomic(report_dir / "ge_results.json", json.dumps([r.raw for r in runs], indent=1, default=str))
    write_text_atomic(report_dir / "report.html", render_html(runs))
    summary["failing_rows"] = len(failures)
    write_text_atomic(report_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    write_text_atomic(report_dir / "metrics.json", json.dumps(_metrics(summary, failures), indent=1, sort_keys=True))
    return ValidationOutcome(summary["success"], failures, summary, report_dir)


def _metrics(summary: dict[str, Any], failures: list[Failure]) -> dict[str, Any]:
    """The compact numbers ``dvc metrics show`` prints: overall result, sizes, failing rows per rule."""
    per_rule: dict[str, int] = {}
    for failure in failures:
        per_rule[failure.rule] = per_rule.get(failure.rule, 0) + 1
    rows = {name: t["rows"] for name, t in summary["tables"].items() if t["kind"] in ("corpus", "labelled", "image")}
    return {
        "passed": int(summary["success"]),
        "failing_rows": len(failures),
        "rule_checks": sum(len(t["rules"]) for t in summary["tables"].values()),
        "rows": rows,
        "failing_rows_by_rule": per_rule,
    }


def _row_order(where: str) -> tuple[int, str]:
    number = where.split(" ", 1)[-1]
    return (int(number), "") if number.isdigit() else (0, where)
