"""Batch scoring of a CSV or JSONL file with an exported classifier: ``selfsup score FILE --model TASK|DIR``.

The same code path as the service (``TextModel.prepare`` + ``run`` + ``rank``, ``check_text`` for what may be
answered, ``needs_human`` for the routing task), without HTTP:

    table = read_table(Path("batch.csv"))                    # ScoreInputError: the file cannot be read
    task, loaded = load_scorer(cfg, "intent")                # the registry's serve.alias version (or a folder)
    summary = score_table(table, loaded, task, cfg, out=Path("batch.scored.csv"))

Every input row comes out, in input order: scored, or with an ``error`` saying which rule its text broke. A file that
cannot be read as a whole (no text column, invalid UTF-8, a bad JSON line, a CSV row with the wrong number of
fields) raises ``ScoreInputError`` naming the file, the line and the rule, before anything is written; the output is
written to a temporary file beside its destination and renamed into place only when complete.

Core module: mlflow is imported only when a task name sends ``load_scorer`` to the registry.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.monitoring.routing import needs_human
from selfsup.serve.inputs import TextRejected, check_text

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# characters that str.splitlines (and JavaScript) take for line breaks but JSON leaves raw inside a string: escaped
# in JSONL output, so that any reader sees one record per line
_LINE_BREAKS_ESCAPED = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class ScoreError(RuntimeError):
    """``selfsup score`` cannot run (bad arguments, no model); the message says what to do. Exit 2."""


class ScoreInputError(ScoreError):
    """The input file cannot be read; the message names the file, the line (and row) and the rule it breaks."""


@dataclass
class Row:
    line: int  # line of the file where the row starts (1 = first line; a CSV header is line 1)
    text: Any  # what the file holds (a JSON line may hold a non-string: check_text refuses it)
    id: Any = None


@dataclass
class Table:
    path: Path
    fmt: str  # "csv" or "jsonl"
    rows: list[Row]
    has_id: bool


@dataclass
class ScoreSummary:
    out: Path
    rows: int
    scored: int
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, error) of every row not scored
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ reading


def input_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ScoreInputError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; selfsup score reads "
                              ".csv files (a header with a text column) and .jsonl files (one JSON object per line)")
    return fmt


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScoreInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ScoreInputError(f"{path}: is a folder, not a file") from None
    except OSError as err:
        raise ScoreInputError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ScoreInputError(f"{path} line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset "
                              f"{err.start}: {err.reason}); save the file as UTF-8") from None


def _read_csv(path: Path, content: str, text_column: str) -> Table:
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ScoreInputError(f"{path} line 1: the file is empty; a CSV needs a header line with a "
                                  f"{text_column!r} column")
        if header.count(text_column) != 1:
            what = "names it twice" if header.count(text_column) > 1 else "has no such column"
            raise ScoreInputError(f"{path} line 1: the header {what}: a CSV needs one {text_column!r} column "
                                  f"(found {header}; --text-column picks another)")
        text_at = header.index(text_column)
        id_at = header.index("id") if "id" in header and text_column != "id" else None
        rows = []
        line = reader.line_num + 1  # where the next record starts
        for record in reader:
            if record:  # the csv module reads a blank line as [] (no field at all): not a row
                if len(record) != len(header):
                    raise ScoreInputError(f"{path} line {line} (row {len(rows) + 1}): {len(record)} fields, the "
                                          f"header has {len(header)} (a stray comma or quote?)")
                rows.append(Row(line, record[text_at], record[id_at] if id_at is not None else None))
            line = reader.line_num + 1
    except csv.Error as err:
        raise ScoreInputError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    return Table(path, "csv", rows, id_at is not None)


def _read_jsonl(path: Path, content: str, text_column: str) -> Table:
    rows = []
    # split on "\n" only: str.splitlines would also split at U+2028 and friends, which JSON strings may hold
    for line, raw in enumerate(content.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ScoreInputError(f"{path} line {line}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise ScoreInputError(f"{path} line {line}: a JSON {type(record).__name__}; each line must be an "
                                  f"object with a {text_column!r} field")
        if text_column not in record:
            raise ScoreInputError(f"{path} line {line}: no {text_column!r} field (fields: {sorted(record)}; "
                                  "--text-column picks another)")
        rows.append(Row(line, record[text_column], record.get("id")))
    has_id = text_column != "id" and any(r.id is not None for r in rows)
    return Table(path, "jsonl", rows, has_id)


def read_table(path: Path, text_column: str = "text") -> Table:
    """Every row of a CSV or JSONL file (format by extension), or ``ScoreInputError`` for the first problem."""
    path = Path(path)
    fmt = input_format(path)
    content = _decode(path)
    return (_read_csv if fmt == "csv" else _read_jsonl)(path, content, text_column)


# ------------------------------------------------------------------------------------------------ the model


def load_scorer(cfg, model: str):
    """``(task, Loaded)`` for ``--model``: an export folder (``DIR`` — the task is the folder's name, as for
    ``selfsup serve --model`` — or ``TASK=DIR``), else a declared text task, whose registry ``serve.alias`` version
    is fetched exactly as the service fetches it."""
    from selfsup.config import EMBEDDER_TASK, IMAGE_TASK
    from selfsup.serve.runtime import ModelLoadError
    from selfsup.serve.sources import NothingToServe, load_folder, resolve

    task, sep, folder = model.partition("=")
    if not sep or Path(model).is_dir():  # a folder whose path holds "=" is still a folder
        task, sep, folder = Path(model).name, "", model
    try:
        if Path(folder).is_dir():
            loaded = load_folder(task, Path(folder), cfg.serve.intra_op_threads, cfg.serve.max_batch_tokens)
        elif sep:
            raise ScoreError(f"--model {model}: {folder} is not a folder")
        elif model in (IMAGE_TASK, EMBEDDER_TASK):
            raise ScoreError(f"--model {model}: not a classifier; selfsup score classifies text "
                             f"(tasks: {', '.join(sorted(cfg.data.tasks))})")
        elif model in cfg.data.tasks:
            loaded, _ = resolve(cfg, model)
        else:
            raise ScoreError(f"--model {model}: neither an export folder nor a text task "
                             f"({', '.join(sorted(cfg.data.tasks))})")
    except (NothingToServe, ModelLoadError) as err:
        raise ScoreError(str(err)) from None
    if loaded.model.kind != "text":
        raise ScoreError(f"--model {model}: {loaded.source} is an {loaded.model.kind} model, not a classifier; "
                         f"selfsup score classifies text")
    return task, loaded


# ------------------------------------------------------------------------------------------------ scoring


def output_path(table: Table, out: Path | None) -> Path:
    """``--out``, or ``<stem>.scored.<ext>`` beside the input; never the input itself, always its format."""
    if out is None:
        return table.path.with_name(f"{table.path.stem}.scored{table.path.suffix}")
    out = Path(out)
    if FORMATS.get(out.suffix.lower(), table.fmt) != table.fmt:
        raise ScoreError(f"--out {out}: the output has the input's format ({table.fmt}); give it a "
                         f"{table.path.suffix} name")
    if out.exists() and out.resolve() == table.path.resolve():
        raise ScoreError(f"--out {out}: that is the input file; write the results somewhere else")
    return out


def columns(table: Table, top_k: int, routing: bool) -> list[str]:
    ranked = [name for k in range(1, top_k + 1) for name in (f"top{k}_label", f"top{k}_probability")]
    return [*(["id"] if table.has_id else []), "text", "label", "confidence", *ranked,
            *(["needs_human"] if routing else []), "model", "version", "error"]


def score_table(table: Table, loaded, task: str, cfg, out: Path | None = None, batch_size: int = 64,
                progress: bool = True) -> ScoreSummary:
    """Score ``table`` with ``loaded`` (a ``Loaded`` text model) and write the results atomically to ``out``."""
    from tqdm import tqdm

    started = time.perf_counter()
    out = output_path(table, out)
    model = loaded.model
    top_k = min(cfg.serve.top_k, len(model.labels))
    routing = task == cfg.route.task
    results: list[dict] = []
    rejected, valid = [], []
    for index, row in enumerate(table.rows):
        result = {"id": row.id, "text": row.text, "model": loaded.name, "version": loaded.version}
        try:
            check_text(row.text, cfg.serve.max_chars)
            valid.append(index)
        except TextRejected as err:
            result["error"] = str(err)
            rejected.append((row.line, str(err)))
        results.append(result)

    with tqdm(total=len(valid), desc=f"scoring with {loaded.name}", unit="text", disable=not progress) as bar:
        for start in range(0, len(valid), batch_size):
            chunk = valid[start : start + batch_size]
            probs = model.run(model.prepare([table.rows[i].text for i in chunk]))  # as the service's batcher does
            for index, p in zip(chunk, probs):
                scores = model.rank(p, top_k)
                result = results[index]
                result.update(label=scores.label, confidence=round(scores.confidence, 6))
                for k, (label, prob) in enumerate(scores.ranked, start=1):
                    result[f"top{k}_label"], result[f"top{k}_probability"] = label, round(prob, 6)
                if routing:
                    result["needs_human"] = needs_human(scores.confidence, cfg.route.min_confidence)
            bar.update(len(chunk))

    names = columns(table, top_k, routing)
    _write_atomic(out, table.fmt, names, results)
    return ScoreSummary(out, len(table.rows), len(valid), rejected, time.perf_counter() - started)


def _write_atomic(out: Path, fmt: str, names: list[str], results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            if fmt == "csv":
                writer = csv.writer(handle)
                writer.writerow(names)
                for result in results:
                    writer.writerow(["" if result.get(name) is None else result[name] for name in names])
            else:
                for result in results:
                    record = {name: result.get(name) for name in names}
                    line = json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS_ESCAPED)
                    try:
                        line.encode("utf-8")
                    except UnicodeEncodeError:  # a lone surrogate read from a JSON escape: written back escaped
                        line = json.dumps(record)
                    handle.write(line + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_rejected(summary: ScoreSummary, shown: int = 5) -> str:
    """One line for stderr: how many rows were not scored, at which lines, and how many broke each rule."""
    from collections import Counter

    lines = ", ".join(str(line) for line, _ in summary.rejected[:shown])
    more = f" and {len(summary.rejected) - shown} more" if len(summary.rejected) > shown else ""
    # one reason per rule: "text has 2,345 characters; the limit is ..." counts with every other long text
    reasons = Counter(re.sub(r"has \d[\d,]* characters", "has too many characters", reason)
                      for _, reason in summary.rejected)
    return (f"{len(summary.rejected)} of {summary.rows} rows not scored (line{'s' if len(summary.rejected) > 1 else ''}"
            f" {lines}{more}; see the error column): "
            + "; ".join(f"{count} × {reason}" for reason, count in reasons.most_common()))
