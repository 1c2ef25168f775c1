"""Sentiment monitoring and intent routing flows, for real: models trained here on the real labelled tweets,
exported to ONNX, registered and crowned champion in a real MLflow store; a real Prefect flow run over a sequence
of real batches with one injected negative surge and one malformed batch; alerts through a real Prefect
notification block to an HTTP receiver on 127.0.0.1."""

import csv
import http.server
import json
import random
import threading
from pathlib import Path

import pytest

from conftest import copy_repo

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
BATCH_ROWS = 200  # large enough that a normal batch's share stays within a few points of the baseline


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def alerts():
    """An HTTP receiver on 127.0.0.1 and a saved Prefect custom-webhook block pointing at it."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(name="selfsup test alerts", url=f"http://127.0.0.1:{server.server_port}/hook",
                                   json_data={"subject": "{{subject}}", "body": "{{body}}"}
                                   ).save("selfsup-alerts", overwrite=True)
    yield _Receiver.received
    server.shutdown()


def _train_and_crown(project: Path, built_data: Path, task: str, examples: int, epochs: int) -> None:
    """Tokenizer + from-scratch classifier on the task's real training split → ONNX → registry → gate → champion."""
    from selfsup.adapters.mlflow import register_onnx, stage_run
    from selfsup.config import FinetuneTaskConfig, ModelConfig, TrainLoopConfig, load_config
    from selfsup.text.data import read_labelled
    from selfsup.text.export import export_classifier
    from selfsup.text.tokenizer import save_hf_tokenizer, train_wordpiece
    from selfsup.text.finetune import finetune
    from selfsup.registry.kinds import text_metrics
    from selfsup.registry.lifecycle import gate_versions, model_name, sha256_file

    # a bare from-scratch model with no classical arm: only the minima and ONNX parity are checked
    cfg = load_config(project / "params.yaml", ["gate.min_pretraining_gain=null", f"gate.tasks.{task}.min_accuracy=0.3",
                                                f"gate.tasks.{task}.min_macro_f1=0.1",
                                                f"gate.tasks.{task}.max_classical_deficit=null"])
    labels = cfg.data.tasks[task].labels
    work = project / "work" / task
    texts, _ = read_labelled(built_data / task / "train.csv")
    save_hf_tokenizer(train_wordpiece(texts[:8000], vocab_size=2000, min_frequency=2), work / "tokenizer",
                      model_max_length=64)
    model = ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, max_position=64, dropout=0.0)
    loop = TrainLoopConfig(progress=False)
    task_cfg = FinetuneTaskConfig(epochs=epochs, batch_size=32, scratch_learning_rate=2e-3, max_length=48,
                                  max_train_examples=examples, out_dir=work)
    result = finetune(task, "scratch", task_cfg, loop, model, built_data / task, labels, work / "tokenizer", None,
                      work / "classifier")
    test_texts, _ = read_labelled(built_data / task / "test.csv")
    exported = export_classifier(work / "classifier", labels, test_texts[:300], 48, work / "onnx", 18, 0.999, 1e-3)
    metrics = text_metrics({"pretrained": {"accuracy": result.val_accuracy, "macro_f1": result.val_macro_f1},
                                    "scratch": {"accuracy": 0.0, "macro_f1": 0.0}},
                                   {"label_agreement": exported.label_agreement,
                                    "max_abs_logit_diff": exported.max_abs_logit_diff})
    with stage_run(cfg.tracking, f"test model {task}", {"stage": "register", "pipeline_key": "monitoring-test"}) as run:
        register_onnx(cfg.tracking, run.run_id, work / "onnx/model.onnx", model_name(cfg, task), metrics, {"task": task},
                      [work / "onnx" / n for n in ("tokenizer.json", "labels.json", "export.json")],
                      sha256_file(work / "onnx/model.onnx"))
    (decision,) = gate_versions(cfg, task)
    assert decision.verdict.passed and "champion" in decision.aliases, decision.verdict.summary


@pytest.fixture(scope="module")
def project(built_data, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = copy_repo(tmp_path_factory.mktemp("monitor") / "repo")
    mp.chdir(project)  # the registry lives at the project's relative mlflow/ path
    _train_and_crown(project, built_data, "sentiment", examples=3000, epochs=1)
    _train_and_crown(project, built_data, "intent", examples=0, epochs=3)
    yield project
    mp.undo()


def _write_batch(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "source"])
        for i, (text, source) in enumerate(rows):
            writer.writerow([f"m{i}", text, source])


def _source(text: str) -> str:
    return "airline" if any(a in text.lower() for a in ("@united", "@americanair", "@usairways", "@southwestair",
                                                        "@jetblue", "@virginamerica")) else "other"


def test_monitoring_alerts_once_on_the_surge_and_quarantines_the_malformed_batch(project, built_data, alerts):
    from selfsup.text.data import read_labelled

    from flows.monitoring import monitor_sentiment

    texts, labels = read_labelled(built_data / "sentiment/test.csv")
    negative = [t for t, y in zip(texts, labels) if y == "negative"]
    rng = random.Random(7)
    inbox = project / "incoming/sentiment"
    names = []
    for i in range(1, 9):
        name = f"2026-11-24T{i:02d}00.csv"
        names.append(name)
        if i == 5:  # the injected surge: 95 % of the batch are negative tweets
            rows = rng.sample(negative, 190) + rng.sample(texts, BATCH_ROWS - 190)
        else:  # the test split's own mix
            rows = rng.sample(texts, BATCH_ROWS)
        _write_batch(inbox / name, [(t, _source(t)) for t in rows])
    malformed = inbox / "2026-11-24T0530.csv"  # arrives after the surge: an empty text and bytes that are not UTF-8
    malformed.write_bytes(b"id,text,source\nm0,,other\nm1,\xff\xfe broken,other\n"
                          + "".join(f"m{i},fine text {i},other\n" for i in range(2, 40)).encode())

    result = monitor_sentiment(repo=str(project))

    assert result["surges"] == [names[4]], result["scored"]
    assert [q["batch"] for q in result["quarantined"]] == [malformed.name]
    assert len(result["scored"]) == 8
    surge_alerts = [a for a in alerts if "surge" in a["subject"]]
    quarantine_alerts = [a for a in alerts if "quarantined" in a["subject"]]
    assert len(surge_alerts) == 1 and names[4] in surge_alerts[0]["subject"]
    assert "z = " in surge_alerts[0]["body"]
    assert len(quarantine_alerts) == 1 and malformed.name in quarantine_alerts[0]["subject"]
    assert len(alerts) == 2
    state = project / "monitoring/sentiment"
    reason = (state / "quarantine" / (malformed.name + ".reason.txt")).read_text()
    assert "row 1: rule 'non_empty' broken" in reason and "row 2: rule 'utf8' broken" in reason
    assert sorted(p.name for p in (state / "processed").iterdir()) == sorted(names)
    assert not any(inbox.iterdir())
    history = list(csv.DictReader((state / "history.csv").open()))
    assert [h["batch"] for h in history] == names and [h["surge"] for h in history].count("True") == 1
    assert json.loads(history[0]["segments"]).keys() <= {"airline", "other"}
    assert (state / "trend.png").stat().st_size > 10_000 and "SURGE" in (state / "report.md").read_text()

    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("selfsup-monitoring")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["surges"] == 1 and run.data.metrics["batches_quarantined"] == 1
    assert len(client.get_metric_history(run.info.run_id, "negative_share")) == 8
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"trend.png", "report.md", "history.csv"}

    # nothing new in the inbox: nothing scored, no alert
    again = monitor_sentiment(repo=str(project))
    assert again["scored"] == [] and len(alerts) == 2


def test_routing_writes_routed_batches_and_a_needs_human_queue(project, built_data):
    from selfsup.text.data import read_labelled

    from flows.routing import route_messages

    texts, _ = read_labelled(built_data / "intent/test.csv")
    _write_batch(project / "incoming/intent/batch-001.csv", [(t, "") for t in texts[:120]])
    result = route_messages(repo=str(project))
    (routed,) = result["routed"]
    assert routed["rows"] == 120 and result["quarantined"] == []
    state = project / "routing/intent"
    rows = list(csv.DictReader((state / "routed/batch-001.csv").open()))
    assert len(rows) == 120 and {r["intent"] for r in rows} <= set(json.loads(
        (state / "model/labels.json").read_text()))
    low = [r for r in rows if float(r["confidence"]) < 0.5]
    queued = list(csv.DictReader((state / "needs_human/batch-001.csv").open())) if low else []
    assert [r["id"] for r in queued] == [r["id"] for r in low] and routed["needs_human"] == len(low)
