"""`selfsup score`: batch scoring of real CSV / JSONL files with the tiny exported classifier, through the CLI."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import INTENT_LABELS
from selfsup.cli import main
from selfsup.serve.predict import OnnxClassifier

REPO = Path(__file__).resolve().parents[2]
PARAMS = ["--params", str(REPO / "params.yaml")]


@pytest.fixture(scope="module")
def oracle(tiny_onnx_classifier):
    """The exported model scored one text at a time by the plain classifier: what every scored row must say."""
    classifier = OnnxClassifier(tiny_onnx_classifier)
    return lambda text: classifier.predict([text])[0]


def _score(capsys, path: Path, model, *extra: str) -> tuple[int, str]:
    code = main([*PARAMS, "score", str(path), "--model", str(model), *extra])
    return code, capsys.readouterr().err


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_scored_like(row: dict, oracle, text: str) -> None:
    expected = oracle(text)
    assert row["label"] in INTENT_LABELS
    # the label is this text's own answer (not a neighbour's): the oracle gives it the top probability
    assert expected.scores[row["label"]] == pytest.approx(expected.confidence, abs=1e-5)
    assert float(row["confidence"]) == pytest.approx(expected.confidence, abs=1e-5)
    ranked = [(row[f"top{k}_label"], float(row[f"top{k}_probability"])) for k in (1, 2, 3)]
    assert ranked[0] == (row["label"], float(row["confidence"]))
    assert len({label for label, _ in ranked}) == 3 and {label for label, _ in ranked} <= set(INTENT_LABELS)
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    for label, prob in ranked:
        assert prob == pytest.approx(expected.scores[label], abs=1e-5)


TEXTS = ["my bag is lost", "can I change my flight, please?", "two hours late again", "thanks!",
         'a "quoted" word\nand a second line', "where is my suitcase", "refund my ticket", "the crew was great"]


def test_csv_round_trip_keeps_every_row_in_order_with_its_id(tiny_onnx_classifier, oracle, tmp_path, capsys):
    ids = [f"m-{i:03d}" for i in range(len(TEXTS))][::-1]  # not sorted: the order must be the file's
    source = _write_csv(tmp_path / "batch.csv", ["id", "channel", "text"], [[i, "mail", t] for i, t in zip(ids, TEXTS)])
    confidences = sorted(oracle(t).confidence for t in TEXTS)
    threshold = (confidences[3] + confidences[4]) / 2  # half the rows above, half below

    code, err = _score(capsys, source, tiny_onnx_classifier, "--batch-size", "3", f"route.min_confidence={threshold}")

    assert code == 0, err
    rows = _read_csv(tmp_path / "batch.scored.csv")  # the default output: <stem>.scored.<ext> beside the input
    assert [r["id"] for r in rows] == ids and [r["text"] for r in rows] == TEXTS
    assert list(rows[0]) == ["id", "text", "label", "confidence", "top1_label", "top1_probability", "top2_label",
                             "top2_probability", "top3_label", "top3_probability", "needs_human", "model", "version",
                             "error"]
    for row, text in zip(rows, TEXTS):
        _assert_scored_like(row, oracle, text)
        assert row["needs_human"] == str(float(row["confidence"]) < threshold)  # the routing rule, intent task
        assert (row["model"], row["version"], row["error"]) == ("intent", "local", "")
    assert {r["needs_human"] for r in rows} == {"True", "False"}


def test_jsonl_round_trip_keeps_ids_and_types_and_routes_only_the_routing_task(tiny_onnx_classifier, oracle,
                                                                               tmp_path, capsys):
    # U+2028 and U+0085 are line breaks to str.splitlines: the output escapes them, one record per line
    records = [{"id": 7, "text": "my bag is lost"}, {"text": "late \u2028 again \u0085 \u00e9\u00e8"},
               {"id": "x-1", "text": "can I change my flight", "extra": [1, 2]}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n",  # a trailing blank
                      encoding="utf-8")

    code, err = _score(capsys, source, f"sentiment={tiny_onnx_classifier}", "--out", str(tmp_path / "o" / "out.jsonl"))

    assert code == 0, err
    lines = (tmp_path / "o" / "out.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [7, None, "x-1"] and [r["text"] for r in rows] == [r["text"] for r in records]
    for row, record in zip(rows, records):
        _assert_scored_like(row, oracle, record["text"])
        assert isinstance(row["confidence"], float) and row["error"] is None
        assert (row["model"], row["version"]) == ("sentiment", "local")
        assert "needs_human" not in row  # only route.task (intent) is routed
    assert not (tmp_path / "in.scored.jsonl").exists()


def test_rows_the_service_would_refuse_are_kept_with_an_error_and_never_answered(tiny_onnx_classifier, oracle,
                                                                                 tmp_path, capsys):
    texts = ["my bag is lost", "", "   \t ", "\u200b\u200d\ufeff", "x" * 21, "late again"]
    source = _write_csv(tmp_path / "b.csv", ["id", "text"], [[str(i), t] for i, t in enumerate(texts)])

    code, err = _score(capsys, source, tiny_onnx_classifier, "serve.max_chars=20")

    assert code == 0, err
    rows = _read_csv(tmp_path / "b.scored.csv")
    assert [r["id"] for r in rows] == [str(i) for i in range(len(texts))]
    errors = [r["error"] for r in rows]
    assert errors[0] == errors[5] == ""
    assert "empty or only whitespace" in errors[1] and "empty or only whitespace" in errors[2]
    assert "only invisible characters" in errors[3]
    assert "the limit is 20 (serve.max_chars)" in errors[4]
    for row in rows[1:5]:
        assert all(row[c] == "" for c in ("label", "confidence", "top1_label", "top1_probability", "needs_human"))
    _assert_scored_like(rows[0], oracle, texts[0])
    _assert_scored_like(rows[5], oracle, texts[5])
    summary = [line for line in err.splitlines() if "not scored" in line]
    assert len(summary) == 1 and summary[0].startswith("4 of 6 rows not scored (lines 3, 4, 5, 6;")
    assert "2 × text is empty or only whitespace" in summary[0]


def test_a_json_text_that_is_no_string_or_no_valid_unicode_is_a_bad_row_not_a_bad_file(tiny_onnx_classifier,
                                                                                        tmp_path, capsys):
    source = tmp_path / "b.jsonl"
    # a JSON escape can spell a lone surrogate, which the tokenizer cannot take and no UTF-8 file can hold
    source.write_text('{"text": null}\n{"text": 5}\n{"text": "ok"}\n{"text": "ab\\ud800cd"}\n', encoding="utf-8")
    code, err = _score(capsys, source, tiny_onnx_classifier)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "b.scored.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["label"] is None for r in rows] == [True, True, False, True]
    assert "must be a string, got NoneType" in rows[0]["error"] and "got int" in rows[1]["error"]
    assert "lone surrogate (\\ud800) at character 3" in rows[3]["error"]
    assert [r["text"] for r in rows] == [None, 5, "ok", "ab\ud800cd"]  # written back as they were read


def test_the_text_column_can_have_another_name_and_a_folder_path_may_hold_an_equals_sign(tiny_onnx_classifier,
                                                                                       oracle, tmp_path, capsys):
    folder = tmp_path / "run=3" / "intent"
    shutil.copytree(tiny_onnx_classifier, folder)
    source = _write_csv(tmp_path / "in.csv", ["body", "text"], [["my bag is lost", ""], ["late again", ""]])
    code, err = _score(capsys, source, folder, "--text-column", "body")
    assert code == 0, err
    rows = _read_csv(tmp_path / "in.scored.csv")
    assert [r["text"] for r in rows] == ["my bag is lost", "late again"] and rows[0]["model"] == "intent"
    for row in rows:
        _assert_scored_like(row, oracle, row["text"])


UNREADABLE = [
    # (file name, bytes, words the one-line message must hold after the file name)
    ("a.csv", b"id,body\n1,hello\n", "line 1: the header has no such column: a CSV needs one 'text' column"),
    ("a.csv", b"", "line 1: the file is empty"),
    ("a.csv", b"id,text\n1,fine\n2,caf\xe9\n", "line 3: not valid UTF-8"),
    ("a.csv", b"id,text\n1,fine\n2,one,two\n", "line 3 (row 2): 3 fields, the header has 2"),
    ("a.csv", b'id,text\n1,"multi\nline"\n2,"bad"quote\n', "line 4: not valid CSV"),
    ("a.jsonl", b'{"text": "fine"}\n\n{"text": "cut\n', "line 3: not valid JSON"),
    ("a.jsonl", b'{"text": "fine"}\n["text"]\n', "line 2: a JSON list; each line must be an object"),
    ("a.jsonl", b'{"text": "fine"}\n{"body": "x"}\n', "line 2: no 'text' field"),
    ("a.jsonl", b'{"text": "fine \xff"}\n', "line 1: not valid UTF-8"),
    ("a.txt", b"text\nhello\n", "unknown format '.txt'"),
]


@pytest.mark.parametrize("name,content,words", UNREADABLE)
def test_an_unreadable_file_exits_2_naming_file_line_and_rule_and_writes_nothing(tiny_onnx_classifier, tmp_path,
                                                                                 capsys, name, content, words):
    source = tmp_path / name
    source.write_bytes(content)
    out = tmp_path / f"result{source.suffix}"
    out.write_text("the previous results\n")

    code, err = _score(capsys, source, tiny_onnx_classifier, "--out", str(out))

    assert code == 2
    assert err.strip() == err.strip().splitlines()[0], "one line"
    assert f"{source}: " in err or f"{source} line" in err
    assert words in err
    assert out.read_text() == "the previous results\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, out.name])  # no temporary file either


@pytest.mark.parametrize("args,words", [
    (["--model", "{missing}"], "neither an export folder nor a text task"),
    (["--model", "image-encoder"], "selfsup score classifies text"),
    (["--model", "{model}", "--out", "{input}"], "that is the input file"),
    (["--model", "{model}", "--out", "{dir}/x.jsonl"], "the output has the input's format (csv)"),
])
def test_bad_arguments_exit_2_and_write_nothing(tiny_onnx_classifier, tmp_path, capsys, args, words):
    source = _write_csv(tmp_path / "in.csv", ["text"], [["hello"]])
    before = source.read_bytes()
    fill = {"missing": str(tmp_path / "no-model"), "model": str(tiny_onnx_classifier), "input": str(source),
            "dir": str(tmp_path)}
    code = main([*PARAMS, "score", str(source), *(a.format(**fill) for a in args)])
    assert code == 2 and words in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["in.csv"] and source.read_bytes() == before


def test_a_task_name_scores_with_the_registry_version_the_service_would_serve(tiny_onnx_classifier, tmp_path,
                                                                              capsys, monkeypatch):
    import selfsup.serve.sources as sources
    from selfsup.serve.batching import Loaded

    asked = []

    def resolve(cfg, task):
        asked.append((task, cfg.serve.alias))
        loaded = sources.load_folder(task, tiny_onnx_classifier)
        return Loaded(loaded.model, "selfsup-intent", "4", "models:/selfsup-intent@champion"), None

    monkeypatch.setattr(sources, "resolve", resolve)
    source = _write_csv(tmp_path / "in.csv", ["text"], [["my bag is lost"]])
    code, err = _score(capsys, source, "intent")
    assert code == 0, err
    assert asked == [("intent", "champion")]
    (row,) = _read_csv(tmp_path / "in.scored.csv")
    assert (row["model"], row["version"]) == ("selfsup-intent", "4") and "needs_human" in row


def test_a_failure_while_scoring_leaves_no_partial_output(tiny_onnx_classifier, tmp_path, monkeypatch):
    from selfsup.config import load_config
    from selfsup.serve.runtime import TextModel
    from selfsup.serve.score import load_scorer, read_table, score_table

    source = _write_csv(tmp_path / "in.csv", ["text"], [[t] for t in TEXTS])
    cfg = load_config(REPO / "params.yaml", [])
    task, loaded = load_scorer(cfg, str(tiny_onnx_classifier))
    calls = []
    real_run = TextModel.run

    def run_then_fail(self, ids, on_call=None):
        calls.append(len(ids))
        if len(calls) == 2:
            raise RuntimeError("onnxruntime fell over")
        return real_run(self, ids, on_call)

    monkeypatch.setattr(TextModel, "run", run_then_fail)
    with pytest.raises(RuntimeError, match="fell over"):
        score_table(read_table(source), loaded, task, cfg, batch_size=4, progress=False)
    assert calls == [4, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["in.csv"]


def test_a_failure_while_writing_leaves_the_previous_output_whole(tiny_onnx_classifier, tmp_path, monkeypatch):
    import types

    import selfsup.serve.score as score
    from selfsup.config import load_config

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("the previous results\n")
    cfg = load_config(REPO / "params.yaml", [])
    table = score.read_table(source)
    task, loaded = score.load_scorer(cfg, str(tiny_onnx_classifier))
    written = []

    def dumps(record, **kwargs):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(record)
        return json.dumps(record, **kwargs)

    monkeypatch.setattr(score, "json", types.SimpleNamespace(dumps=dumps))
    with pytest.raises(OSError, match="disk full"):
        score.score_table(table, loaded, task, cfg, out, progress=False)
    assert len(written) == 3  # three lines had gone to the temporary file
    assert out.read_text() == "the previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
