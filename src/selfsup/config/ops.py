"""Operations: MLflow tracking, the quality gate, sentiment monitoring, routing and the Prefect schedules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup.config.base import _check, option


@dataclass
class TrackingConfig:
    """MLflow tracking. ``MLFLOW_TRACKING_URI`` in the environment wins over ``tracking_uri``."""

    enabled: bool = option(True, help="log runs and register models in MLflow")
    tracking_uri: str = option("sqlite:///mlflow/mlflow.db", help="MLflow tracking store")
    artifact_location: str = option("mlflow/artifacts", help="artifact folder for new experiments (file store)")
    experiment: str = option("selfsup", help="MLflow experiment name")


@dataclass
class TaskGate:
    """Minimum test-set quality for one task's registered models."""

    min_accuracy: float = option(0.0, help="a version with a lower test accuracy fails the gate", ge=0, le=1)
    min_macro_f1: float = option(0.0, help="a version with a lower test macro-F1 fails the gate", ge=0, le=1)
    min_pretraining_gain: float | None = option(
        None, help="this task's required pretraining gain, instead of gate.min_pretraining_gain (null: use that); "
                   "a negative value accepts a tie within that margin", ge=-1, le=1)
    max_classical_deficit: float | None = option(
        None, help="the pretrained model's test metric (gate.metric) may be at most this much below the classical "
                   "arm's (TF-IDF + linear model, same labels); 0: must match or beat it; null: not checked", ge=0, le=1)


IMAGE_TASK = "image-encoder"  # the image encoder among the registry's tasks: `selfsup registry ... image-encoder`
EMBEDDER_TASK = "embedder"  # the sentence embedder + its indexes among the registry's tasks
EMBEDDER_GATE_METRICS = ("accuracy_at_1", "mrr_at_10", "articles_precision_at_5")
IMAGE_GATE_METRICS = ("knn_accuracy", "probe_accuracy")


@dataclass
class ImageGate:
    """The gate for the image encoder (``vision.export.registered_model``), on held-out accuracies from
    ``evaluate_ssl``. Collapse uses ``vision.pretrain.min_embedding_std`` / ``min_effective_rank`` and ONNX parity
    ``vision.export.max_abs_diff`` / ``min_label_agreement`` (one value, one place)."""

    metric: str = option("knn_accuracy", help="held-out metric image champions are compared on: knn_accuracy or "
                                              "probe_accuracy (the exported probe, trained on every pool label)",
                         choices=IMAGE_GATE_METRICS)
    min_knn_accuracy: float = option(0.0, help="a version with a lower held-out kNN accuracy fails the gate", ge=0,
                                     le=1)
    min_probe_accuracy: float = option(0.0, help="a version whose exported linear probe (100 % of the labels) has "
                                                 "a lower held-out accuracy fails the gate", ge=0, le=1)
    min_pretraining_gain: float | None = option(
        0.0, help="kNN accuracy of the pretrained encoder minus the same encoder at random init must exceed this "
                  "(null: not required)")
    max_raw_pixel_deficit: float | None = option(
        None, help="the encoder's held-out kNN accuracy may be at most this much below kNN on raw pixels (the "
                   "classical baseline, same pool and protocol); 0: must match or beat it; null: not checked", ge=0,
        le=1)
    champion_tolerance: float = option(
        0.02, help="a new image encoder may be at most this much worse than the current champion (on `metric`)",
        ge=0)


@dataclass
class EmbedderGate:
    """The gate for the sentence embedder (``retrieval.export.registered_model``), on the retrieval stage's test
    metrics of the SimCSE embeddings. ONNX parity uses ``retrieval.export.min_top1_agreement`` / ``max_abs_diff``."""

    metric: str = option("accuracy_at_1", choices=EMBEDDER_GATE_METRICS,
                         help="test metric embedder champions are compared on (answer retrieval accuracy@1, its "
                              "MRR@10, or related-article precision@5)")
    min_accuracy_at_1: float = option(0.0, ge=0, le=1, help="answer retrieval: a version whose top-1 knowledge-base "
                                                            "entry has the message's intent less often fails")
    min_precision_at_5: float = option(0.0, ge=0, le=1, help="related articles: a version with a lower precision@5 "
                                                             "fails")
    min_mlm_gain: float | None = option(
        None, help="SimCSE minus the mean-pooled MLM embeddings on accuracy@1 must exceed this (null: not required)")
    max_baseline_deficit: float | None = option(
        None, ge=0, le=1, help="accuracy@1 and precision@5 may each be at most this much below TF-IDF cosine (the "
                               "classical baseline, same index and queries); 0: must match or beat it; null: not "
                               "checked")
    champion_tolerance: float = option(0.02, ge=0, help="a new embedder may be at most this much worse than the "
                                                        "current champion (on `metric`)")


@dataclass
class GateConfig:
    """The quality gate the training flow applies to each newly registered version before it may get an alias.

    ONNX parity uses ``export.min_label_agreement`` / ``export.max_abs_logit_diff`` (one value, one place)."""

    metric: str = option("macro_f1", help="text models: test metric champions are compared on: accuracy or macro_f1",
                         choices=("accuracy", "macro_f1"))
    champion_tolerance: float = option(
        0.02, help="a new version may be at most this much worse than the current champion (on `metric`)", ge=0)
    min_pretraining_gain: float | None = option(
        0.0, help="the pretrained model must beat the from-scratch baseline by more than this (null: not required)")
    tasks: dict[str, TaskGate] = option(default_factory=dict, help="minimum quality per task (missing task: no minimum)")
    image: ImageGate = option(default_factory=ImageGate, help="the gate for the image encoder")
    embedder: EmbedderGate = option(default_factory=EmbedderGate, help="the gate for the sentence embedder")


@dataclass
class BatchRules:
    """Rules every incoming batch file must pass before it is scored (the same Great Expectations rules as data)."""

    min_rows: int = option(20, help="a batch with fewer rows is rejected (too small to judge a share)", ge=1)
    min_chars: int = option(1, help="shortest accepted text", ge=1)
    max_chars: int = option(2000, help="longest accepted text")
    max_duplicate_rate: float = option(0.5, help="highest accepted share of repeated texts in one batch", ge=0, le=1)

    def check(self, path: str) -> None:
        _check(self.max_chars >= self.min_chars, f"{path}.max_chars", "must be >= min_chars")


@dataclass
class MonitorConfig:
    """Sentiment monitoring: score each new inbox batch with the champion model and alert on a negative surge.

    Surge rule (one-sided test of a proportion against a rolling baseline): with p0 the pooled negative share of the
    last ``window`` non-surge batches and p the batch's share over n texts, a batch surges when
    z = (p - p0) / sqrt(p0 (1 - p0) / n) >= ``z_threshold`` and p - p0 >= ``min_increase``."""

    inbox: Path = option(Path("incoming/sentiment"), help="drop batch files here: CSV with a text column "
                         "(optional id and segment columns, e.g. topic or source)")
    state_dir: Path = option(Path("monitoring/sentiment"), help="history, reports, processed/ and quarantine/")
    task: str = option("sentiment", help="the registered task whose model scores the batches")
    alias: str = option("champion", help="registry alias of the model version to use")
    negative_label: str = option("negative", help="the label whose share is monitored")
    window: int = option(8, help="baseline = the last this many non-surge batches", ge=1)
    min_baseline_batches: int = option(3, help="no surge is called before this many baseline batches exist", ge=1)
    z_threshold: float = option(3.0, help="one-sided z score needed to call a surge", gt=0)
    min_increase: float = option(0.10, help="and the negative share must exceed the baseline by at least this", ge=0,
                                 lt=1)
    alert_block: str = option("selfsup-alerts", help="name of a saved Prefect notification block (Slack, Teams, "
                              "e-mail, custom webhook) that receives alerts; if none is saved, alerts are only logged")
    batch: BatchRules = option(default_factory=BatchRules, help="validation rules per incoming batch")

    def check(self, path: str) -> None:
        _check(self.min_baseline_batches <= self.window, f"{path}.min_baseline_batches",
               f"must be <= window ({self.window})")


@dataclass
class RouteConfig:
    """Customer-service routing: classify each inbox batch with the champion intent model."""

    inbox: Path = option(Path("incoming/intent"), help="drop batch files here: CSV with a text column (optional id)")
    state_dir: Path = option(Path("routing/intent"), help="routed/, needs_human/, processed/ and quarantine/")
    task: str = option("intent", help="the registered task whose model routes the messages")
    alias: str = option("champion", help="registry alias of the model version to use")
    min_confidence: float = option(0.5, help="messages whose top probability is lower go to the needs_human queue",
                                   ge=0, le=1)
    alert_block: str = option("selfsup-alerts", help="Prefect notification block told about quarantined batches")
    batch: BatchRules = option(default_factory=lambda: BatchRules(min_rows=1),
                               help="validation rules per incoming batch")


@dataclass
class ServeConfig:
    """The inference service (``selfsup serve``): which models, how requests are batched, limits on input."""

    host: str = option("127.0.0.1", help="address to listen on; 0.0.0.0 exposes the service to the network")
    port: int = option(8000, help="port to listen on", ge=1, le=65535)
    tasks: list[str] = option(default_factory=list, help="registered tasks to serve (intent, sentiment, topic, "
                              "image-encoder, embedder); empty: every declared text task, the image encoder and the "
                              "sentence embedder")
    alias: str = option("champion", help="registry alias whose version is served (and followed when it moves)")
    models_dir: Path = option(Path("serving/models"), help="where versions fetched from the registry are kept")
    poll_seconds: float = option(10.0, help="how often the registry is checked for a moved alias; 0: never", ge=0)
    max_batch_size: int = option(64, help="most texts (images) gathered into one batch (text batches are then "
                                 "split by serve.max_batch_tokens)", ge=1, le=4096)
    max_wait_ms: float = option(0.0, help="how long the first request of a batch waits for others to join it "
                                "(a batch also starts as soon as the previous one finishes)", ge=0, le=1000)
    max_batch_tokens: int = option(1024, help="a gathered text batch is sorted by length and split into session "
                                   "calls of at most this many padded tokens (texts x longest)", ge=1)
    intra_op_threads: int = option(2, help="onnxruntime threads per session (measured: benchmarks/serve_load.py)",
                                   ge=1, le=256)
    gc_threshold: int = option(10_000, help="allocations between the garbage collector's young-generation runs "
                                            "once serving (Python's default: 700; 0 keeps it); what is loaded "
                                            "before serving is frozen out of collection (selfsup.serve.build."
                                            "settle_heap)", ge=0)
    top_k: int = option(3, help="labels returned per text unless a request asks for another number", ge=1)
    max_chars: int = option(2000, help="longest text accepted, in characters", ge=1)
    max_batch_items: int = option(64, help="most texts in one request", ge=1)
    max_body_bytes: int = option(1_048_576, help="largest request body accepted (bytes)", ge=1024)
    max_image_pixels: int = option(4_194_304, help="largest image accepted (width x height), against "
                                   "decompression bombs", ge=1)
    # connection limits (hostile or broken clients): docs/serving.md "Limits"
    head_timeout_seconds: float = option(10.0, help="a connection must send a whole request head (request line and "
                                         "headers) within this many seconds of opening or of its previous answer, "
                                         "else it is closed (idle or slow-header connections would be held forever)",
                                         gt=0, le=3600)
    max_head_bytes: int = option(65_536, help="largest request head (request line and headers) accepted; a larger "
                                 "one gets 431 and the connection is closed", ge=1024, le=16_777_216)
    body_timeout_seconds: float = option(10.0, help="the whole body must arrive within this many seconds of the "
                                         "request head, else 408 (a Content-Length larger than the body sent)",
                                         gt=0, le=3600)
    keep_alive_seconds: int = option(5, help="an idle keep-alive connection is closed after this many seconds "
                                     "(uvicorn's timeout_keep_alive)", ge=1, le=3600)


@dataclass
class OrchestrationConfig:
    """Prefect deployments and the local server that runs their schedules (``make orchestrate``)."""

    # five whitespace-separated fields, as str.split() counts them (re's \s is the same Unicode whitespace)
    training_cron: str = option("0 2 * * *", help="cron schedule of the training flow: 5 fields (nightly)",
                                pattern=r"\s*\S+(\s+\S+){4}\s*")
    monitor_interval_minutes: float = option(15.0, help="how often the sentiment monitoring flow runs", gt=0)
    route_interval_minutes: float = option(5.0, help="how often the routing flow runs", gt=0)
    timezone: str = option("UTC", help="time zone of the cron schedule")
    server_host: str = option("127.0.0.1", help="the local Prefect server listens here (ignored if PREFECT_API_URL is set)")
    server_port: int = option(4200, help="port of the local Prefect server", ge=1, le=65535)
    prefect_home: Path = option(Path(".prefect"), help="PREFECT_HOME of the local server (its SQLite database)")
    mlflow_ui_url: str = option("http://127.0.0.1:5000", help="base URL of `mlflow ui`, for links from flow runs")
