"""The ``validate`` stage: check the corpus and every labelled set before anything trains on them.

``validate_data(cfg)`` streams the files named in ``cfg.data`` and turns each into a table (one row per text, plus
derived columns such as ``utf8_valid``, ``is_duplicate``, ``n_splits``), cut into chunks of at most
``CHUNK_ROWS`` rows and ``CHUNK_CHARS`` characters. The suites declared in ``selfsup.datasets.suites`` run over each
chunk through Great Expectations (``selfsup.adapters.gx``, imported only here and only when validating), which
merges the chunk results into one result per table. What spans chunks (duplicates, the same text in two splits, a
test text in the corpus) is tracked as 8-byte hashes of the normalized texts, so memory is one chunk plus 8 bytes
per row whatever the size of the files (measured: docs/reliability.md). Outputs, in ``cfg.validate.report_dir``:

    metrics.json      passed, failing rows per rule, rows per file (DVC metrics)
    summary.json      per file and rule: success, unexpected / element counts; the first failures, in words
    ge_results.json   the Great Expectations validation result of each table (failing values capped)
    report.html       the Great Expectations rendering of every result, failures first

It writes nothing else. A failure is returned (and the CLI exits non-zero) with messages that name the file, the
row and the rule for the first failures, and how many more there are. A file that cannot be read row by row at
all (missing, empty, a wrong header, UTF-16, a line over ``MAX_LINE_BYTES``) raises ``DataFileError``, whose message
names the file, the row or line and the rule, before any other file is checked.

Accepted as valid: a UTF-8 byte-order mark at the start of a file, and CRLF line endings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from selfsup.config import Config, TableRules
from selfsup.datasets.clean import dedup_key
from selfsup.datasets.suites import rules_for
from selfsup.fileio import write_text_atomic

CHUNK_ROWS = 20_000  # rows per Great Expectations batch
CHUNK_CHARS = 8_000_000  # ... and at most this many characters of text per batch (a few long documents)
MAX_LINE_BYTES = 16 * 2**20  # a physical line longer than this is not read into memory: the file is rejected
KEEP_FAILURES = 100  # failing rows kept (with their values) per table and rule; the rest are only counted
WRITTEN_FAILURES = 1000  # failure messages written to summary.json; the rest are counted there
SHOWN_CHARS = 200  # a value longer than this is cut in messages and reports


@dataclass
class Table:
    """One batch to validate: column lists of equal length, and where each row came from. A whole table (image
    validation, an incoming batch) or one chunk of a streamed file."""

    name: str  # e.g. "intent/train" or "corpus"
    kind: str  # corpus | labelled | classes | splits | batch | image | image_splits
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
class CheckedTable:
    """A table after its suite ran over every chunk: the merged GE result and the first failures per rule."""

    name: str
    kind: str
    file: str
    rows: int
    run: Any  # selfsup.adapters.gx.TableRun
    failures: list[Failure]


@dataclass
class ValidationOutcome:
    success: bool
    failures: list[Failure]  # the first failing rows of every table and rule (sorted by file, row, rule)
    summary: dict[str, Any]
    report_dir: Path
    failing_rows: int = -1  # every failing (row, rule), also those not kept in ``failures``

    def __post_init__(self):
        if self.failing_rows < 0:
            self.failing_rows = len(self.failures)

    def error_message(self, limit: int) -> str:
        shown = self.failures[:limit]
        lines = [f"data validation FAILED: {self.failing_rows:,} failing row(s); first {len(shown)}:"]
        lines += ["  " + f.message() for f in shown]
        left_out = self.failing_rows - len(shown)
        if left_out > 0:
            by_rule = _failing_by_rule(self.summary)
            lines.append(f"  ... and {left_out:,} more not shown (failing rows by rule: "
                         + ", ".join(f"{rule} {n:,}" for rule, n in sorted(by_rule.items())) + ")")
        lines.append(f"full Great Expectations results: {self.report_dir / 'ge_results.json'} and "
                     f"{self.report_dir / 'report.html'}")
        return "\n".join(lines)


class DataFileError(ValueError):
    """A data file is missing or cannot be read row by row (empty, wrong header or encoding, a line over
    ``MAX_LINE_BYTES``, broken CSV quoting); nothing in it can be validated row by row."""


# ------------------------------------------------------------------------------------------------ hashed texts


class HashSet64:
    """A set of 64-bit hashes in sorted numpy runs (8 bytes per member): the memory a set of texts costs when the
    texts themselves are not kept. Runs merge like a binary counter, so there are O(log n) of them."""

    def __init__(self):
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def contains(self, values: np.ndarray) -> np.ndarray:
        found = np.zeros(len(values), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, values), len(run) - 1)
            found |= run[at] == values
        return found

    def add(self, values: np.ndarray) -> None:
        values = np.unique(values)
        values = values[~self.contains(values)]
        if not len(values):
            return
        self._runs.append(values)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.append(np.union1d(older, newer))

    def update(self, other: HashSet64) -> None:
        for run in other._runs:
            self.add(run)


LONG_TEXT = 1 << 16  # longer texts are keyed block by block (see _key_digest)


def _key_digest(text: str) -> bytes:
    """8-byte BLAKE2b digest of ``clean.dedup_key(text)``. A long text is normalized block by block: the regular
    expression in ``dedup_key`` builds one object per whitespace run, which costs over 10x the text's size (a 10 MB
    line took 115 MB). Both ways hash the same bytes (test_bad_data checks)."""
    if len(text) <= LONG_TEXT:
        return hashlib.blake2b(dedup_key(text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    digest = hashlib.blake2b(digest_size=8)
    separator, inside_word = "", False
    for start in range(0, len(text), LONG_TEXT):
        block = text[start:start + LONG_TEXT]
        for i, word in enumerate(block.split()):  # the same whitespace as dedup_key's \\s+ (Py_UNICODE_ISSPACE)
            # casefold maps character by character, so a word cut by the block boundary folds the same in parts
            joined = i == 0 and inside_word and not block[0].isspace()
            digest.update(((separator if not joined else "") + word.casefold()).encode("utf-8", "surrogatepass"))
            separator = " "
        inside_word = not block[-1].isspace()
    return digest.digest()


def _hashes(texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(uint64 hash per row, mask of rows that have a text)``: the hash of the case/space-insensitive key
    (``clean.dedup_key``), the identity duplicates and leakage are judged by."""
    present = np.array([t is not None for t in texts], dtype=bool)
    digests = b"".join(_key_digest(t) if t is not None else bytes(8) for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64), present


def _duplicates(hashes: np.ndarray, present: np.ndarray, seen: HashSet64) -> np.ndarray:
    """Rows whose text repeats an earlier row of the table (this chunk or an earlier one); adds them to ``seen``."""
    duplicate = np.zeros(len(hashes), dtype=bool)
    index = np.flatnonzero(present)
    values = hashes[index]
    within = np.ones(len(values), dtype=bool)
    within[np.unique(values, return_index=True)[1]] = False  # every occurrence after the first in this chunk
    duplicate[index] = within | seen.contains(values)
    seen.add(values)
    return duplicate


# invisible: whitespace, C0/C1 controls, format characters (zero-width space/joiners, bidi marks, word joiner,
# BOM, tag characters), variation selectors and the blank-rendering fillers (Hangul, braille blank)
_VISIBLE = re.compile(
    "[^\\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e0fff]")


def _text_columns(texts: list[str | None]) -> dict[str, list[Any]]:
    return {
        "text": texts,
        # the non-null check needs a value, not the whole text: its first characters do
        "text_nonblank": [t[:SHOWN_CHARS] if t is not None and _VISIBLE.search(t) else None for t in texts],
        "text_length": [len(t) if t is not None else None for t in texts],
        "no_nul": [t is None or "\x00" not in t for t in texts],
    }


# ------------------------------------------------------------------------------------------------ reading files


def _physical_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` per line of ``path``, line ending kept; a leading UTF-8 byte-order mark dropped.
    A UTF-16/32 file, or a line over ``MAX_LINE_BYTES``, is a ``DataFileError``."""
    with path.open("rb") as handle:
        head = handle.read(4)
        for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                          (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
            if head.startswith(bom):
                raise DataFileError(f"{path} row 0 (whole file): rule 'utf8' broken — the file is {name} encoded "
                                    f"(it starts with the byte-order mark {bom.hex(' ').upper()}); save it as UTF-8")
        handle.seek(3 if head.startswith(b"\xef\xbb\xbf") else 0)
        for number, line in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(line) > MAX_LINE_BYTES:
                raise DataFileError(f"{path} line {number}: rule 'well_formed' broken — the line is longer than "
                                    f"{MAX_LINE_BYTES // 2**20} MiB; no valid row is this long")
            yield number, line


def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


# a row as read: (where, text, label, utf8 valid, well formed, raw text shown for unparseable rows)
Row = tuple[str, "str | None", "str | None", bool, bool, str]


def corpus_rows(path: Path) -> Iterator[Row]:
    """The JSON-lines corpus, one row per line; a line that is not valid UTF-8 or JSON, or not an object with a
    string ``source``, becomes a failing row, not a crash."""
    if not path.is_file():
        raise DataFileError(f"{path}: corpus file not found (data.corpus in params.yaml)")
    for line_no, raw_line in _physical_lines(path):
        line, ok = _decode(raw_line.rstrip(b"\r\n"))
        text, parsed = None, False
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if isinstance(record, dict):
            text = record.get("text") if isinstance(record.get("text"), str) else None
            parsed = isinstance(record.get("source"), str) and (text is not None or record.get("text") is None)
        # a JSON \\u escape can smuggle in a lone surrogate: not encodable as UTF-8 either
        if text is not None and ok:
            ok = not any("\ud800" <= ch <= "\udfff" for ch in text)
        yield f"line {line_no}", text, None, ok, parsed, line[:SHOWN_CHARS]


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(record number, cells)`` of a CSV file, the header being record 0; undecodable bytes kept as
    surrogate escapes (``\\udc80``–``\\udcff``) so the rows holding them can be named."""
    lines = _physical_lines(path)
    current = [0]

    def decoded() -> Iterator[str]:
        for number, line in lines:
            current[0] = number
            yield line.decode("utf-8", errors="surrogateescape")

    # the csv module's default field limit (128 KiB) is below a long article: let the length rules judge fields
    # instead (raised once for the process, never lowered: a larger limit only makes csv read more)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    try:
        yield from enumerate(csv.reader(decoded()))
    except csv.Error as err:
        reason = str(err)
        if "new-line character seen in unquoted field" in reason:  # the csv module's advice does not apply here
            reason = "a carriage return (\\r) inside an unquoted field: binary data, or old Mac line endings?"
        raise DataFileError(f"{path} line {current[0]}: rule 'well_formed' broken — the CSV cannot be parsed "
                            f"past this line ({reason})") from None


def _has_escapes(cell: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in cell)


def _header_problem(header: list[str], required: tuple[str, ...], exact: bool) -> str:
    """Why a CSV header is wrong, in words (empty when it is right)."""
    missing = [c for c in required if c not in header]
    extra = [c for c in header if c not in required] if exact else []
    if not missing and not extra and len(set(header)) == len(header):
        return ""
    problem = f"expected the columns {','.join(required)}, got {header}"
    if len(header) == 1:
        for delimiter, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if delimiter in header[0]:
                problem += f" (the header looks {name}-separated; the file must be comma-separated)"
                break
    if any("\x00" in cell for cell in header):
        problem += " (the header holds NUL bytes: UTF-16 text without a byte-order mark? save it as UTF-8)"
    return problem


def labelled_rows(path: Path, task: str) -> Iterator[Row]:
    """A ``text,label`` CSV file, one row per record. Rows are numbered from 1 after the header."""
    if not path.is_file():
        raise DataFileError(f"{path}: labelled file not found (data.tasks.{task}.dir in params.yaml)")
    records = _csv_records(path)
    _, header = next(records, (0, None))
    if header is None:
        raise DataFileError(f"{path} row 0 (whole file): rule 'non_empty' broken — the file is empty (expected a "
                            "header text,label and one row per text)")
    problem = _header_problem(header, ("text", "label"), exact=True)
    if problem:
        raise DataFileError(f"{path} row 0 (header): rule 'columns' broken — {problem}")
    i_text, i_label = header.index("text"), header.index("label")
    for row_no, row in records:
        ok = not any(_has_escapes(cell) for cell in row)
        if not ok:  # show the undecodable bytes as U+FFFD from here on
            row = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in row]
        text = row[i_text] if i_text < len(row) else None
        label = row[i_label] if i_label < len(row) else None
        yield (f"row {row_no}", text, label, ok, len(row) == len(header),
               ",".join(cell[:SHOWN_CHARS] for cell in row)[:SHOWN_CHARS])


def _chunked(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """Rows in lists of at most ``CHUNK_ROWS`` rows and about ``CHUNK_CHARS`` characters of text."""
    chunk: list[Row] = []
    chars = 0
    for row in rows:
        chunk.append(row)
        chars += len(row[1] or "")
        if len(chunk) >= CHUNK_ROWS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _rows_table(name: str, kind: str, path: Path, rows: list[Row], rules: TableRules, labels: list[str],
                seen: HashSet64) -> tuple[Table, np.ndarray, np.ndarray]:
    """One chunk as a table of the suites' columns; also its rows' text hashes and which rows have a text."""
    texts = [r[1] for r in rows]
    hashes, present = _hashes(texts)
    columns = _text_columns(texts)
    columns.update(is_duplicate=_duplicates(hashes, present, seen).tolist(), utf8_valid=[r[3] for r in rows],
                   well_formed=[r[4] for r in rows], raw=[r[5] for r in rows])
    if kind == "labelled":
        columns["label"] = [r[2] for r in rows]
    file = str(path)
    return Table(name, kind, columns, [(file, r[0]) for r in rows], rules, labels), hashes, present


# --------------------------------------------------------------------------------------------------- checking


def _hint(rule: str, value: Any, labels: list[str]) -> str:
    """A hint added to a failure's explanation where the fix is likely: a label that differs from a declared one
    only in case or surrounding spaces."""
    if rule == "label_in_set" and isinstance(value, str):
        near = [label for label in labels if label.strip().casefold() == value.strip().casefold()]
        if near:
            return f"; did you mean {near[0]!r}? labels must match exactly (case and surrounding spaces count)"
    return ""


def _shown(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return value[:SHOWN_CHARS] + "..."
    return value


def check_table(session, name: str, kind: str, file: str, rules: list, chunks: Iterable[Table],
                keep: int = KEEP_FAILURES) -> CheckedTable:
    """Run ``rules`` (``[(Rule, kwargs)]``) over every chunk of one table; the merged result and the first
    ``keep`` failing rows of each rule, named by file, row and rule."""
    run = session.table(name, rules, keep)
    failures: list[Failure] = []
    explain = {rule.name: rule.explain for rule, _ in rules}
    column_of = {rule.name: rule.column for rule, _ in rules}
    rows = 0
    for chunk in chunks:
        for rule_name, positions in run.add(chunk.columns).items():
            column = chunk.columns.get(column_of[rule_name], chunk.columns["text"])
            for i in positions:
                where_file, where = chunk.locations[i]
                value = column[i]
                failures.append(Failure(rule_name, where_file, where, _shown(value),
                                        explain[rule_name] + _hint(rule_name, value, chunk.labels)))
        rows += len(chunk.locations)
    merged = run.finish()
    passed = {r.rule.name for r in merged.results if r.success}
    # a rule with a tolerance (duplicate_rate's mostly) that holds over the whole table: its rows are no failures
    failures = [f for f in failures if f.rule not in passed]
    return CheckedTable(name, kind, file, rows, merged, failures)


def _suite(kind: str, rules: TableRules, labels: list[str]) -> list:
    return [(r, r.kwargs(rules, labels)) for r in rules_for(kind, rules)]


def _check_labelled_task(session, task: str, spec, splits: list[str], rules: TableRules, keep: int,
                         test_hashes: HashSet64) -> list[CheckedTable]:
    checked, split_sets, paths = [], {}, {}
    for split in splits:
        path = Path(spec.dir) / f"{split}.csv"
        seen, counts = HashSet64(), Counter()

        def chunks(path=path, seen=seen, counts=counts, split=split) -> Iterator[Table]:
            for rows in _chunked(labelled_rows(path, task)):
                table, _, _ = _rows_table(f"{task}/{split}", "labelled", path, rows, rules, spec.labels, seen)
                counts.update(label for label in table.columns["label"] if label in spec.labels)
                yield table

        table = check_table(session, f"{task}/{split}", "labelled", str(path),
                            _suite("labelled", rules, spec.labels), chunks(), keep)
        if table.rows == 0:
            raise DataFileError(f"{path} row 1: rule 'non_empty' broken — the file has a header but no rows")
        checked.append(table)
        classes = Table(f"{task}/{split}/classes", "classes",
                        {"label": list(spec.labels), "count": [counts[label] for label in spec.labels],
                         "text": list(spec.labels)},
                        [(str(path), f"label '{label}'") for label in spec.labels], rules, spec.labels)
        checked.append(check_table(session, classes.name, "classes", str(path), _suite("classes", rules, []),
                                   [classes], keep))
        split_sets[split], paths[split] = seen, path
        if split == "test":
            test_hashes.update(seen)

    def leakage_chunks() -> Iterator[Table]:  # a second pass over the split files, now that every split is known
        for split in splits:
            for rows in _chunked(labelled_rows(paths[split], task)):
                texts = [r[1] for r in rows]
                hashes, present = _hashes(texts)
                n_splits = sum(s.contains(hashes).astype(int) for s in split_sets.values()) * present
                yield Table(f"{task}/splits", "splits", {"n_splits": n_splits.tolist(), "text": texts},
                            [(str(paths[split]), r[0]) for r in rows], rules)

    checked.append(check_table(session, f"{task}/splits", "splits", str(paths[splits[0]]),
                               _suite("splits", rules, []), leakage_chunks(), keep))
    return checked


def _check_corpus(session, path: Path, rules: TableRules, keep: int, test_hashes: HashSet64) -> CheckedTable:
    seen = HashSet64()

    def chunks() -> Iterator[Table]:
        for rows in _chunked(corpus_rows(path)):
            table, hashes, present = _rows_table("corpus", "corpus", path, rows, rules, [], seen)
            table.columns["in_test_split"] = (test_hashes.contains(hashes) & present).tolist()
            yield table

    table = check_table(session, "corpus", "corpus", str(path), _suite("corpus", rules, []), chunks(), keep)
    if table.rows == 0:
        raise DataFileError(f"{path} row 0 (whole file): rule 'non_empty' broken — the corpus file is empty "
                            "(expected one JSON object {source, id, text} per line)")
    return table


def _precheck(cfg: Config) -> None:
    """Every file exists and is not empty, before Great Expectations is even imported: the common mistakes fail
    in a fraction of a second."""
    for task, spec in cfg.data.tasks.items():
        for split in cfg.data.splits:
            path = Path(spec.dir) / f"{split}.csv"
            rows = labelled_rows(path, task)
            if next(rows, None) is None:  # reads the header (and the first row) only
                raise DataFileError(f"{path} row 1: rule 'non_empty' broken — the file has a header but no rows")
            rows.close()
    corpus = Path(cfg.data.corpus)
    if not corpus.is_file():
        raise DataFileError(f"{corpus}: corpus file not found (data.corpus in params.yaml)")
    if corpus.stat().st_size == 0:
        raise DataFileError(f"{corpus} row 0 (whole file): rule 'non_empty' broken — the corpus file is empty "
                            "(expected one JSON object {source, id, text} per line)")
    rows = corpus_rows(corpus)
    next(rows, None)  # the encoding check and the first line only
    rows.close()


def validate_data(cfg: Config) -> ValidationOutcome:
    """Run every suite over the configured data and write the reports; see the module docstring."""
    _precheck(cfg)
    from selfsup.adapters import gx  # lazy: the core never imports Great Expectations at import time

    session = gx.Session()
    keep = max(KEEP_FAILURES, cfg.validate.max_failures_shown)
    checked: list[CheckedTable] = []
    test_hashes = HashSet64()
    for task, spec in cfg.data.tasks.items():
        rules = cfg.validate.tables.get(task, TableRules())
        checked += _check_labelled_task(session, task, spec, list(cfg.data.splits), rules, keep, test_hashes)
    checked.insert(0, _check_corpus(session, Path(cfg.data.corpus), cfg.validate.corpus, keep, test_hashes))
    return write_outcome(checked, Path(cfg.validate.report_dir), gx.render_html)


# --------------------------------------------------------------------------------------------- incoming batches

SEGMENT_COLUMNS = ("segment", "topic", "source")  # optional grouping column of an incoming batch, first found wins


def read_batch(path: Path, rules: TableRules) -> Table:
    """An incoming batch (CSV with a ``text`` column; optional ``id`` and a segment column) as a table."""
    if not path.is_file():
        raise DataFileError(f"{path}: batch file not found")
    records = _csv_records(path)
    _, header = next(records, (0, None))
    if header is None or "text" not in header:
        raise DataFileError(f"{path} row 0 (header): rule 'columns' broken — expected a text column, got {header}")
    index = {name: header.index(name) for name in ("text", "id", *SEGMENT_COLUMNS) if name in header}
    segment = next((name for name in SEGMENT_COLUMNS if name in index), None)
    columns: dict[str, list[Any]] = {name: [] for name in ("text", "id", "segment", "utf8_valid", "well_formed", "raw")}
    locations = []
    for row_no, row in records:
        ok = not any(_has_escapes(cell) for cell in row)
        if not ok:
            row = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in row]
        cell = lambda name: row[index[name]] if name in index and index[name] < len(row) else None  # noqa: E731
        columns["text"].append(cell("text"))
        columns["id"].append(cell("id") if "id" in index else str(row_no))
        columns["segment"].append(cell(segment) if segment else None)
        columns["utf8_valid"].append(ok)
        columns["well_formed"].append(len(row) == len(header))
        columns["raw"].append(",".join(row)[:SHOWN_CHARS])
        locations.append((str(path), f"row {row_no}"))
    texts = columns.pop("text")
    hashes, present = _hashes(texts)
    columns = {**_text_columns(texts), "is_duplicate": _duplicates(hashes, present, HashSet64()).tolist(), **columns}
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
    checked = check_table(gx.Session(), table.name, "batch", str(path), _suite("batch", rules, []), [table])
    return table, sorted(checked.failures, key=lambda f: (_row_order(f.where), f.rule))


# ------------------------------------------------------------------------------------------------- the reports


def write_outcome(checked: list[CheckedTable], report_dir: Path, render_html: Callable) -> ValidationOutcome:
    """Write the four reports for checked tables and return the outcome (shared by the text ``validate`` and the
    image ``validate_images`` stages). Failure lists are capped; every count is complete."""
    failures: list[Failure] = []
    summary: dict[str, Any] = {"success": True, "tables": {}}
    for table in checked:
        entry = summary["tables"].setdefault(table.name, {"kind": table.kind, "file": table.file, "rows": table.rows,
                                                          "rules": {}})
        for result in table.run.results:
            entry["rules"][result.rule.name] = {
                "success": result.success, "unexpected": result.unexpected_count, "elements": result.element_count,
            }
            summary["success"] &= result.success
        failures += table.failures
    failures.sort(key=lambda f: (f.file, _row_order(f.where), f.rule))
    runs = [table.run for table in checked]
    write_text_atomic(report_dir / "ge_results.json", json.dumps([r.raw for r in runs], indent=1, default=str))
    write_text_atomic(report_dir / "report.html", render_html(runs))
    by_rule = _failing_by_rule(summary)
    total = sum(by_rule.values())
    summary["failing_rows"] = total
    summary["failures"] = [f.message() for f in failures[:WRITTEN_FAILURES]]
    summary["failures_left_out"] = total - len(summary["failures"])
    write_text_atomic(report_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    write_text_atomic(report_dir / "metrics.json", json.dumps(_metrics(summary), indent=1, sort_keys=True))
    return ValidationOutcome(summary["success"], failures, summary, report_dir, total)


def _failing_by_rule(summary: dict[str, Any]) -> dict[str, int]:
    """Failing rows per rule over every table, counting only rules that failed (a tolerated duplicate is none)."""
    per_rule: dict[str, int] = {}
    for table in summary["tables"].values():
        for rule, result in table["rules"].items():
            if not result["success"]:
                per_rule[rule] = per_rule.get(rule, 0) + result["unexpected"]
    return per_rule


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The compact numbers ``dvc metrics show`` prints: overall result, sizes, failing rows per rule."""
    rows = {name: t["rows"] for name, t in summary["tables"].items() if t["kind"] in ("corpus", "labelled", "image")}
    return {
        "passed": int(summary["success"]),
        "failing_rows": summary["failing_rows"],
        "rule_checks": sum(len(t["rules"]) for t in summary["tables"].values()),
        "rows": rows,
        "failing_rows_by_rule": _failing_by_rule(summary),
    }


def _row_order(where: str) -> tuple[int, str]:
    number = where.split(" ", 1)[-1]
    return (int(number), "") if number.isdigit() else (0, where)
