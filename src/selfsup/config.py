"""Typed configuration: dataclasses filled from ``params.yaml``, overridable with ``key.path=value``.

Every stage reads its section of one ``Config``. Loading is strict: an unknown key, a value of the wrong type or
a value out of range raises ``ConfigError`` naming the key path (``validate.corpus.max_chars``), so a typo in
``params.yaml`` or on the command line never silently falls back to a default.

    cfg = load_config("params.yaml", ["validate.corpus.min_chars=5"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message names its key path."""


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with help text (shown by ``selfsup config --help-keys``)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(**kwargs)


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {message}")


# --------------------------------------------------------------------------------------------------- sections


@dataclass
class TaskData:
    """A labelled text-classification set: ``{dir}/{train,validation,test}.csv`` with columns ``text,label``."""

    dir: Path = option(help="folder holding train.csv, validation.csv and test.csv (columns text,label)")
    labels: list[str] = option(help="the declared label set; validation rejects any other label")

    def check(self, path: str) -> None:
        _check(len(self.labels) >= 2, f"{path}.labels", f"needs at least 2 labels, got {self.labels}")
        _check(len(set(self.labels)) == len(self.labels), f"{path}.labels", f"has duplicates: {self.labels}")


@dataclass
class DataConfig:
    """Where the versioned data lives. Point these at your own files to train on your own data."""

    corpus: Path = option(
        Path("data/corpus/unlabeled.jsonl"),
        help="unlabeled corpus for pretraining: JSON lines with fields source, id, text",
    )
    tasks: dict[str, TaskData] = option(
        default_factory=dict, help="labelled sets by task name (intent, sentiment, topic, or your own)"
    )
    splits: list[str] = option(
        default_factory=lambda: ["train", "validation", "test"], help="split file names every task has"
    )

    def check(self, path: str) -> None:
        _check(bool(self.tasks), f"{path}.tasks", "declare at least one labelled task")
        _check("test" in self.splits, f"{path}.splits", "must include 'test'")


@dataclass
class TableRules:
    """Validation rules for one table (the corpus or one labelled set)."""

    min_chars: int = option(1, help="shortest allowed text, in characters (after stripping)")
    max_chars: int = option(5000, help="longest allowed text, in characters")
    max_duplicate_rate: float = option(
        0.0, help="largest allowed share of rows whose text duplicates an earlier row (case/space-insensitive)"
    )
    min_per_class: int = option(0, help="fewest examples each declared label must have in every split")

    def check(self, path: str) -> None:
        _check(self.min_chars >= 1, f"{path}.min_chars", f"must be >= 1, got {self.min_chars}")
        _check(self.max_chars >= self.min_chars, f"{path}.max_chars", "must be >= min_chars")
        _check(0.0 <= self.max_duplicate_rate < 1.0, f"{path}.max_duplicate_rate", "must be in [0, 1)")
        _check(self.min_per_class >= 0, f"{path}.min_per_class", "must be >= 0")


@dataclass
class ValidateConfig:
    """The ``validate`` stage: Great Expectations suites over the corpus and every labelled set."""

    report_dir: Path = option(
        Path("artifacts/validation"), help="where the summary, the full GE results (JSON) and the HTML report go"
    )
    max_failures_shown: int = option(10, help="how many failing rows to name per rule in the error message")
    corpus: TableRules = option(default_factory=TableRules, help="rules for the unlabeled corpus")
    tables: dict[str, TableRules] = option(
        default_factory=dict, help="rules per labelled task (keys must be tasks declared under data.tasks)"
    )

    def check(self, path: str) -> None:
        _check(self.max_failures_shown >= 1, f"{path}.max_failures_shown", "must be >= 1")


@dataclass
class TokenizerConfig:
    """The ``tokenizer`` stage: a WordPiece tokenizer trained from scratch on the unlabeled corpus."""

    vocab_size: int = option(16000, help="vocabulary size, special tokens included")
    min_frequency: int = option(2, help="a word piece must occur this often to enter the vocabulary")
    lowercase: bool = option(True, help="lower-case and strip accents before splitting (BERT 'uncased')")
    out_dir: Path = option(Path("models/tokenizer"), help="where tokenizer.json and the HF tokenizer files go")

    def check(self, path: str) -> None:
        _check(self.vocab_size >= 100, f"{path}.vocab_size", f"must be >= 100, got {self.vocab_size}")
        _check(self.min_frequency >= 1, f"{path}.min_frequency", "must be >= 1")


@dataclass
class ModelConfig:
    """A BERT-style encoder built from this config (never from a hub checkpoint)."""

    hidden_size: int = option(256, help="width of every layer")
    num_layers: int = option(4, help="transformer layers")
    num_heads: int = option(4, help="attention heads (must divide hidden_size)")
    intermediate_size: int = option(1024, help="feed-forward width")
    max_position: int = option(128, help="longest sequence the position embeddings cover")
    dropout: float = option(0.1, help="dropout on hidden states and attention probabilities")

    def check(self, path: str) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", "must be >= 1")
        _check(self.hidden_size % self.num_heads == 0, f"{path}.num_heads",
               f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}")
        _check(0.0 <= self.dropout < 1.0, f"{path}.dropout", "must be in [0, 1)")


@dataclass
class TrainLoopConfig:
    """What every training recipe shares: device, precision, seed, progress."""

    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, or cuda[:N]")
    precision: str = option("fp32", help="fp32, or bf16 (autocast; GPU)")
    threads: int = option(0, help="CPU threads for torch (0 = all cores)")
    seed: int = option(1234, help="random seed for initialisation, masking and sampling")
    progress: bool = option(True, help="show a progress bar")

    def check(self, path: str) -> None:
        _check(self.precision in ("fp32", "bf16"), f"{path}.precision", f"must be fp32 or bf16, got {self.precision!r}")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), f"{path}.device",
               f"must be auto, cpu or cuda[:N], got {self.device!r}")
        _check(self.threads >= 0, f"{path}.threads", "must be >= 0")


@dataclass
class PretrainConfig:
    """The ``pretrain_mlm`` stage: masked-language-model pretraining on packed sequences of the corpus."""

    model: ModelConfig = option(default_factory=ModelConfig, help="the encoder architecture")
    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    seq_len: int = option(128, help="tokens per packed training sequence ([CLS] and [SEP] included)")
    batch_size: int = option(32, help="sequences per optimizer step")
    max_steps: int = option(1000, help="optimizer steps")
    learning_rate: float = option(1e-3, help="peak learning rate (AdamW), after linear warm-up")
    warmup_steps: int = option(100, help="linear warm-up steps; then linear decay to 0 at max_steps")
    weight_decay: float = option(0.01, help="AdamW weight decay (not on biases and LayerNorm)")
    mlm_probability: float = option(0.15, help="share of tokens selected for masking (80/10/10 mask/random/keep)")
    source_weights: dict[str, float] = option(
        default_factory=dict,
        help="sampling weight per corpus source (e.g. tweets: 3.0); sources not named weigh 1.0",
    )
    validation_fraction: float = option(0.01, help="share of packed sequences held out for validation loss")
    eval_every: int = option(200, help="validate every N steps (and at the end)")
    eval_batches: int = option(10, help="validation batches per evaluation")
    checkpoint_every: int = option(200, help="save a resumable checkpoint every N steps")
    out_dir: Path = option(Path("models/mlm"), help="the pretrained encoder (HF format) and its checkpoint")
    metrics_dir: Path = option(Path("artifacts/pretrain"), help="metrics.json and the loss curve for DVC")

    def check(self, path: str) -> None:
        _check(self.seq_len >= 8, f"{path}.seq_len", "must be >= 8")
        _check(self.seq_len <= self.model.max_position, f"{path}.seq_len",
               f"must be <= model.max_position ({self.model.max_position})")
        for name in ("batch_size", "max_steps", "eval_every", "eval_batches", "checkpoint_every"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", "must be >= 1")
        _check(self.learning_rate > 0, f"{path}.learning_rate", "must be > 0")
        _check(0 <= self.warmup_steps < self.max_steps, f"{path}.warmup_steps", "must be in [0, max_steps)")
        _check(0.0 < self.mlm_probability < 1.0, f"{path}.mlm_probability", "must be in (0, 1)")
        _check(0.0 < self.validation_fraction < 0.5, f"{path}.validation_fraction", "must be in (0, 0.5)")
        for source, weight in self.source_weights.items():
            _check(weight >= 0, f"{path}.source_weights.{source}", "must be >= 0")


@dataclass
class FinetuneTaskConfig:
    """Fine-tuning one labelled task; the same settings train the from-scratch baseline."""

    epochs: int = option(3, help="passes over the (possibly capped) training set")
    batch_size: int = option(32, help="examples per optimizer step")
    learning_rate: float = option(1e-4, help="peak learning rate (AdamW) for the pretrained model")
    scratch_learning_rate: float = option(5e-4, help="peak learning rate for the from-scratch baseline")
    warmup_ratio: float = option(0.1, help="share of steps used for linear warm-up")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    max_length: int = option(64, help="tokens per example (longer texts are truncated)")
    max_train_examples: int = option(0, help="cap on training examples, stratified (0 = all)")
    out_dir: Path = option(Path("models/finetune"), help="where the two classifiers go (<out_dir>/<task>/...)")

    def check(self, path: str) -> None:
        for name in ("epochs", "batch_size", "max_length"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", "must be >= 1")
        _check(self.learning_rate > 0 and self.scratch_learning_rate > 0, f"{path}.learning_rate", "must be > 0")
        _check(0 <= self.warmup_ratio < 1, f"{path}.warmup_ratio", "must be in [0, 1)")
        _check(self.max_train_examples >= 0, f"{path}.max_train_examples", "must be >= 0")


@dataclass
class FinetuneConfig:
    """The ``finetune@<task>`` stages."""

    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    tasks: dict[str, FinetuneTaskConfig] = option(default_factory=dict, help="settings per labelled task")


@dataclass
class ExportConfig:
    """The ``export@<task>`` stages: ONNX export, parity check against PyTorch, registration."""

    out_dir: Path = option(Path("models/onnx"), help="ONNX model, tokenizer and label map per task")
    opset: int = option(18, help="ONNX opset")
    min_label_agreement: float = option(0.999, help="fail if onnxruntime and PyTorch agree on fewer test labels")
    max_abs_logit_diff: float = option(1e-3, help="fail if any logit differs by more than this")
    registered_model_prefix: str = option("selfsup", help="models register as <prefix>-<task>")

    def check(self, path: str) -> None:
        _check(0.0 < self.min_label_agreement <= 1.0, f"{path}.min_label_agreement", "must be in (0, 1]")
        _check(self.max_abs_logit_diff > 0, f"{path}.max_abs_logit_diff", "must be > 0")


@dataclass
class TrackingConfig:
    """MLflow tracking. ``MLFLOW_TRACKING_URI`` in the environment wins over ``tracking_uri``."""

    enabled: bool = option(True, help="log runs and register models in MLflow")
    tracking_uri: str = option("sqlite:///mlflow/mlflow.db", help="MLflow tracking store")
    artifact_location: str = option("mlflow/artifacts", help="artifact folder for new experiments (file store)")
    experiment: str = option("selfsup", help="MLflow experiment name")


# ----------------------------------------------------------------------------------- vision (issue 6: image SSL)
# Everything the image stages read lives under one top-level `vision:` section (data, validate, pretrain,
# evaluate, export), so the image pipeline is one block here and in params.yaml.

SSL_METHODS = ("simclr", "moco", "byol", "simsiam", "dino")
BACKBONES = ("convnet", "resnet18")


@dataclass
class VisionDataConfig:
    """The image data: a manifest (split,file,member,label) beside the image shards it names."""

    manifest: Path = option(Path("data/images/manifest.csv"), help="image manifest; shards are found beside it")
    classes: list[str] = option(
        default_factory=lambda: ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                                 "bag", "ankle_boot"],
        help="the declared class names (evaluation labels; Fashion-MNIST's by default)")
    pretrain_split: str = option("train", help="the unlabeled pool pretraining reads (pixels only, no labels)")
    eval_split: str = option("test", help="the held-out split kNN / linear-probe accuracy is reported on")
    max_pretrain_images: int = option(0, help="use only the first N pool images for pretraining (0 = all)")
    max_eval_train_images: int = option(0, help="labelled pool images for the kNN bank / probes (0 = all)")
    max_eval_images: int = option(0, help="held-out images to evaluate on (0 = all)")

    def check(self, path: str) -> None:
        _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes), f"{path}.classes",
               f"needs at least 2 distinct class names, got {self.classes}")
        _check(self.pretrain_split != self.eval_split, f"{path}.eval_split", "must differ from pretrain_split")
        for name in ("max_pretrain_images", "max_eval_train_images", "max_eval_images"):
            _check(getattr(self, name) >= 0, f"{path}.{name}", "must be >= 0")


@dataclass
class ImageRules:
    """The ``validate_images`` stage: what every image in the manifest must satisfy."""

    report_dir: Path = option(Path("artifacts/validation_images"), help="summary, GE results and HTML report")
    max_failures_shown: int = option(10, help="failing rows named per run in the error message")
    modes: list[str] = option(default_factory=lambda: ["L"], help="allowed PIL modes (L = 8-bit grayscale)")
    min_side: int = option(8, help="smallest allowed width/height in pixels")
    max_side: int = option(1024, help="largest allowed width/height in pixels")
    min_bytes: int = option(67, help="smallest plausible file size (the smallest valid PNG is 67 bytes)")

    def check(self, path: str) -> None:
        _check(bool(self.modes), f"{path}.modes", "allow at least one mode")
        _check(1 <= self.min_side <= self.max_side, f"{path}.max_side", "need 1 <= min_side <= max_side")
        _check(self.max_failures_shown >= 1, f"{path}.max_failures_shown", "must be >= 1")


@dataclass
class AugmentConfig:
    """The two-view augmentation (torchvision.transforms.v2), applied independently to each view."""

    crop_scale: list[float] = option(default_factory=lambda: [0.25, 1.0], help="RandomResizedCrop area range")
    flip_p: float = option(0.5, help="probability of a horizontal flip")
    jitter_p: float = option(0.8, help="probability of colour jitter")
    brightness: float = option(0.4, help="colour-jitter brightness strength")
    contrast: float = option(0.4, help="colour-jitter contrast strength")
    saturation: float = option(0.0, help="colour-jitter saturation strength (0 for grayscale data)")
    hue: float = option(0.0, help="colour-jitter hue strength (0 for grayscale data)")
    grayscale_p: float = option(0.0, help="probability of converting to grayscale (RGB data)")
    blur_p: float = option(0.0, help="probability of Gaussian blur (cheap to skip at 28 px)")
    blur_sigma: list[float] = option(default_factory=lambda: [0.1, 2.0], help="Gaussian blur sigma range")
    solarize_p: float = option(0.0, help="probability of solarizing the *second* view (BYOL/DINO use 0.2)")
    erase_p: float = option(0.0, help="probability of random erasing (a cutout)")

    def check(self, path: str) -> None:
        _check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
               f"{path}.crop_scale", f"must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "erase_p"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{path}.{name}", "must be a probability in [0, 1]")
        _check(len(self.blur_sigma) == 2 and 0 < self.blur_sigma[0] <= self.blur_sigma[1], f"{path}.blur_sigma",
               "must be [low, high] with 0 < low <= high")


@dataclass
class SSLPretrainConfig:
    """The ``pretrain_ssl`` stage: self-supervised pretraining of an image encoder with one method."""

    method: str = option("simclr", help="simclr | moco | byol | simsiam | dino")
    backbone: str = option("convnet", help="convnet (small CPU CNN) | resnet18 (CIFAR-style stem for small images)")
    width: int = option(32, help="channels of the first convnet stage (doubled per stage); resnet18 ignores it")
    image_size: int = option(28, help="side of the augmented crops fed to the encoder")
    projection_dim: int = option(128, help="output size of the projection head")
    hidden_dim: int = option(512, help="hidden size of the projection/prediction MLPs")
    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    channels_last: bool = option(False, help="channels_last memory format (faster convolutions on GPU)")
    augment: AugmentConfig = option(default_factory=AugmentConfig, help="the two-view augmentation")
    batch_size: int = option(256, help="images per step (each seen as two views)")
    max_steps: int = option(300, help="optimizer steps")
    learning_rate: float = option(2e-3, help="peak AdamW learning rate (after warm-up, cosine decay to 0)")
    warmup_steps: int = option(20, help="linear warm-up steps")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    temperature: float = option(0.2, help="softmax temperature of NT-Xent / InfoNCE (simclr, moco)")
    queue_size: int = option(4096, help="moco: negatives kept in the queue (a multiple of batch_size)")
    momentum: float = option(0.99, help="moco/byol/dino: EMA momentum of the target/teacher (cosine to 1 for byol/dino)")
    dino_out_dim: int = option(1024, help="dino: prototypes in the DINO head")
    teacher_temperature: float = option(0.04, help="dino: teacher softmax temperature (sharpening)")
    student_temperature: float = option(0.1, help="dino: student softmax temperature")
    center_momentum: float = option(0.9, help="dino: EMA momentum of the teacher-output center")
    monitor_every: int = option(50, help="compute the collapse monitor every N steps (and at the end)")
    monitor_images: int = option(1024, help="pool images the collapse monitor embeds")
    min_embedding_std: float = option(0.1, help="fail below this std of L2-normalised embeddings x sqrt(dim) "
                                      "(1 = spread evenly, 0 = collapsed to one point)")
    min_effective_rank: float = option(2.0, help="fail below this effective rank of the embedding matrix")
    out_dir: Path = option(Path("models/ssl"), help="the pretrained encoder (encoder.pt + config)")
    metrics_dir: Path = option(Path("artifacts/pretrain_ssl"), help="metrics.json, history.csv, curves")

    def check(self, path: str) -> None:
        _check(self.method in SSL_METHODS, f"{path}.method", f"must be one of {SSL_METHODS}, got {self.method!r}")
        _check(self.backbone in BACKBONES, f"{path}.backbone", f"must be one of {BACKBONES}, got {self.backbone!r}")
        for name in ("width", "image_size", "projection_dim", "hidden_dim", "batch_size", "max_steps",
                     "monitor_every", "monitor_images", "dino_out_dim"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", "must be >= 1")
        _check(self.batch_size >= 2, f"{path}.batch_size", "contrastive losses need >= 2 images per batch")
        _check(self.learning_rate > 0, f"{path}.learning_rate", "must be > 0")
        _check(0 <= self.warmup_steps < self.max_steps, f"{path}.warmup_steps", "must be in [0, max_steps)")
        for name in ("temperature", "teacher_temperature", "student_temperature"):
            _check(getattr(self, name) > 0, f"{path}.{name}", "must be > 0")
        for name in ("momentum", "center_momentum"):
            _check(0.0 <= getattr(self, name) < 1.0, f"{path}.{name}", "must be in [0, 1)")
        _check(self.queue_size >= self.batch_size and self.queue_size % self.batch_size == 0, f"{path}.queue_size",
               f"must be a multiple of batch_size ({self.batch_size}), got {self.queue_size}")
        _check(self.min_embedding_std >= 0 and self.min_effective_rank >= 0, f"{path}.min_embedding_std",
               "collapse thresholds must be >= 0")


@dataclass
class SSLEvaluateConfig:
    """The ``evaluate_ssl`` stage: frozen-encoder kNN and linear probes vs random init and supervised training."""

    knn_k: int = option(20, help="neighbours voting in kNN classification")
    knn_temperature: float = option(0.07, help="kNN vote weight exp(cosine / T)")
    label_fractions: list[float] = option(default_factory=lambda: [0.01, 0.1, 1.0],
                                          help="shares of the labelled pool used for probes and supervised baselines")
    probe_epochs: int = option(30, help="linear-probe epochs (full-batch-free AdamW on cached features)")
    probe_learning_rate: float = option(1e-2, help="linear-probe learning rate")
    supervised_steps: int = option(300, help="optimizer steps of the supervised-from-scratch baseline per fraction")
    supervised_batch_size: int = option(64, help="images per step of the supervised-from-scratch baseline")
    supervised_learning_rate: float = option(2e-3, help="supervised baseline peak AdamW learning rate")
    tsne_images: int = option(1500, help="held-out images in the 2-D t-SNE plot (0 = no plot)")
    out_dir: Path = option(Path("artifacts/evaluate_ssl"), help="metrics.json, plots and the probe")
    probe_path: Path = option(Path("models/ssl_probe/probe.pt"), help="the 100%-labels linear probe (for export)")

    def check(self, path: str) -> None:
        _check(self.knn_k >= 1, f"{path}.knn_k", "must be >= 1")
        _check(self.knn_temperature > 0, f"{path}.knn_temperature", "must be > 0")
        _check(bool(self.label_fractions) and all(0 < f <= 1 for f in self.label_fractions),
               f"{path}.label_fractions", f"must be shares in (0, 1], got {self.label_fractions}")
        _check(1.0 in self.label_fractions, f"{path}.label_fractions", "must include 1.0 (the exported probe)")
        for name in ("probe_epochs", "supervised_steps", "supervised_batch_size"):
            _check(getattr(self, name) >= 1, f"{path}.{name}", "must be >= 1")


@dataclass
class SSLExportConfig:
    """The ``export_ssl`` stage: encoder + probe to ONNX, parity-checked, registered."""

    out_dir: Path = option(Path("models/onnx/image-encoder"), help="model.onnx, classes.json, export.json")
    opset: int = option(18, help="ONNX opset")
    max_abs_diff: float = option(1e-3, help="fail if any embedding or logit differs from PyTorch by more")
    min_label_agreement: float = option(0.999, help="fail if fewer held-out predictions agree with PyTorch")
    parity_images: int = option(1000, help="held-out images the parity check scores")
    registered_model: str = option("selfsup-image-encoder", help="MLflow registered model name (the task "
                                                             "`image-encoder` of `selfsup registry`)")

    def check(self, path: str) -> None:
        _check(self.max_abs_diff > 0, f"{path}.max_abs_diff", "must be > 0")
        _check(0 < self.min_label_agreement <= 1, f"{path}.min_label_agreement", "must be in (0, 1]")
        _check(self.parity_images >= 1, f"{path}.parity_images", "must be >= 1")


@dataclass
class VisionConfig:
    """The image pipeline: validate_images -> pretrain_ssl -> evaluate_ssl -> export_ssl."""

    data: VisionDataConfig = option(default_factory=VisionDataConfig, help="the image data")
    validate: ImageRules = option(default_factory=ImageRules, help="the validate_images stage")
    pretrain: SSLPretrainConfig = option(default_factory=SSLPretrainConfig, help="the pretrain_ssl stage")
    evaluate: SSLEvaluateConfig = option(default_factory=SSLEvaluateConfig, help="the evaluate_ssl stage")
    export: SSLExportConfig = option(default_factory=SSLExportConfig, help="the export_ssl stage")


@dataclass
class TaskGate:
    """Minimum test-set quality for one task's registered models."""

    min_accuracy: float = option(0.0, help="a version with a lower test accuracy fails the gate")
    min_macro_f1: float = option(0.0, help="a version with a lower test macro-F1 fails the gate")
    min_pretraining_gain: float | None = option(
        None, help="this task's required pretraining gain, instead of gate.min_pretraining_gain (null: use that); "
                   "a negative value accepts a tie within that margin")

    def check(self, path: str) -> None:
        _check(0.0 <= self.min_accuracy <= 1.0, f"{path}.min_accuracy", "must be in [0, 1]")
        _check(0.0 <= self.min_macro_f1 <= 1.0, f"{path}.min_macro_f1", "must be in [0, 1]")
        _check(self.min_pretraining_gain is None or -1.0 <= self.min_pretraining_gain <= 1.0,
               f"{path}.min_pretraining_gain", "must be null or in [-1, 1]")


IMAGE_TASK = "image-encoder"  # the image encoder among the registry's tasks: `selfsup registry ... image-encoder`
IMAGE_GATE_METRICS = ("knn_accuracy", "probe_accuracy")


@dataclass
class ImageGate:
    """The gate for the image encoder (``vision.export.registered_model``), on held-out accuracies from
    ``evaluate_ssl``. Collapse uses ``vision.pretrain.min_embedding_std`` / ``min_effective_rank`` and ONNX parity
    ``vision.export.max_abs_diff`` / ``min_label_agreement`` (one value, one place)."""

    metric: str = option("knn_accuracy", help="held-out metric image champions are compared on: knn_accuracy or "
                                              "probe_accuracy (the exported probe, trained on every pool label)")
    min_knn_accuracy: float = option(0.0, help="a version with a lower held-out kNN accuracy fails the gate")
    min_probe_accuracy: float = option(0.0, help="a version whose exported linear probe (100 % of the labels) has "
                                                 "a lower held-out accuracy fails the gate")
    min_pretraining_gain: float | None = option(
        0.0, help="kNN accuracy of the pretrained encoder minus the same encoder at random init must exceed this "
                  "(null: not required)")
    champion_tolerance: float = option(
        0.02, help="a new image encoder may be at most this much worse than the current champion (on `metric`)")

    def check(self, path: str) -> None:
        _check(self.metric in IMAGE_GATE_METRICS, f"{path}.metric",
               f"must be one of {list(IMAGE_GATE_METRICS)}, got {self.metric!r}")
        for name in ("min_knn_accuracy", "min_probe_accuracy"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{path}.{name}", "must be in [0, 1]")
        _check(self.champion_tolerance >= 0, f"{path}.champion_tolerance", "must be >= 0")


@dataclass
class GateConfig:
    """The quality gate the training flow applies to each newly registered version before it may get an alias.

    ONNX parity uses ``export.min_label_agreement`` / ``export.max_abs_logit_diff`` (one value, one place)."""

    metric: str = option("macro_f1", help="text models: test metric champions are compared on: accuracy or macro_f1")
    champion_tolerance: float = option(
        0.02, help="a new version may be at most this much worse than the current champion (on `metric`)")
    min_pretraining_gain: float | None = option(
        0.0, help="the pretrained model must beat the from-scratch baseline by more than this (null: not required)")
    tasks: dict[str, TaskGate] = option(default_factory=dict, help="minimum quality per task (missing task: no minimum)")
    image: ImageGate = option(default_factory=ImageGate, help="the gate for the image encoder (issue 6)")

    def check(self, path: str) -> None:
        _check(self.metric in ("accuracy", "macro_f1"), f"{path}.metric", f"must be accuracy or macro_f1, got {self.metric!r}")
        _check(self.champion_tolerance >= 0, f"{path}.champion_tolerance", "must be >= 0")


@dataclass
class BatchRules:
    """Rules every incoming batch file must pass before it is scored (the same Great Expectations rules as data)."""

    min_rows: int = option(20, help="a batch with fewer rows is rejected (too small to judge a share)")
    min_chars: int = option(1, help="shortest accepted text")
    max_chars: int = option(2000, help="longest accepted text")
    max_duplicate_rate: float = option(0.5, help="highest accepted share of repeated texts in one batch")

    def check(self, path: str) -> None:
        _check(self.min_rows >= 1, f"{path}.min_rows", "must be >= 1")
        _check(1 <= self.min_chars <= self.max_chars, f"{path}", "needs 1 <= min_chars <= max_chars")
        _check(0.0 <= self.max_duplicate_rate <= 1.0, f"{path}.max_duplicate_rate", "must be in [0, 1]")


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
    window: int = option(8, help="baseline = the last this many non-surge batches")
    min_baseline_batches: int = option(3, help="no surge is called before this many baseline batches exist")
    z_threshold: float = option(3.0, help="one-sided z score needed to call a surge")
    min_increase: float = option(0.10, help="and the negative share must exceed the baseline by at least this")
    alert_block: str = option("selfsup-alerts", help="name of a saved Prefect notification block (Slack, Teams, "
                              "e-mail, custom webhook) that receives alerts; if none is saved, alerts are only logged")
    batch: BatchRules = option(default_factory=BatchRules, help="validation rules per incoming batch")

    def check(self, path: str) -> None:
        _check(self.window >= 1, f"{path}.window", "must be >= 1")
        _check(1 <= self.min_baseline_batches <= self.window, f"{path}.min_baseline_batches", "must be in [1, window]")
        _check(self.z_threshold > 0, f"{path}.z_threshold", "must be > 0")
        _check(0.0 <= self.min_increase < 1.0, f"{path}.min_increase", "must be in [0, 1)")


@dataclass
class RouteConfig:
    """Customer-service routing: classify each inbox batch with the champion intent model."""

    inbox: Path = option(Path("incoming/intent"), help="drop batch files here: CSV with a text column (optional id)")
    state_dir: Path = option(Path("routing/intent"), help="routed/, needs_human/, processed/ and quarantine/")
    task: str = option("intent", help="the registered task whose model routes the messages")
    alias: str = option("champion", help="registry alias of the model version to use")
    min_confidence: float = option(0.5, help="messages whose top probability is lower go to the needs_human queue")
    alert_block: str = option("selfsup-alerts", help="Prefect notification block told about quarantined batches")
    batch: BatchRules = option(default_factory=lambda: BatchRules(min_rows=1),
                               help="validation rules per incoming batch")

    def check(self, path: str) -> None:
        _check(0.0 <= self.min_confidence <= 1.0, f"{path}.min_confidence", "must be in [0, 1]")


@dataclass
class OrchestrationConfig:
    """Prefect deployments and the local server that runs their schedules (``make serve``)."""

    training_cron: str = option("0 2 * * *", help="cron schedule of the training flow (nightly)")
    monitor_interval_minutes: float = option(15.0, help="how often the sentiment monitoring flow runs")
    route_interval_minutes: float = option(5.0, help="how often the routing flow runs")
    timezone: str = option("UTC", help="time zone of the cron schedule")
    server_host: str = option("127.0.0.1", help="the local Prefect server listens here (ignored if PREFECT_API_URL is set)")
    server_port: int = option(4200, help="port of the local Prefect server")
    prefect_home: Path = option(Path(".prefect"), help="PREFECT_HOME of the local server (its SQLite database)")
    mlflow_ui_url: str = option("http://127.0.0.1:5000", help="base URL of `mlflow ui`, for links from flow runs")

    def check(self, path: str) -> None:
        _check(len(self.training_cron.split()) == 5, f"{path}.training_cron", "must be a 5-field cron expression")
        _check(self.monitor_interval_minutes > 0 and self.route_interval_minutes > 0, path, "intervals must be > 0")
        _check(1 <= self.server_port <= 65535, f"{path}.server_port", "must be a TCP port")


@dataclass
class Config:
    """The whole configuration, one section per stage."""

    preset: str = option("", help="name of a preset under `presets` applied over this file (e.g. base, tiny)")
    presets: dict[str, dict] = option(default_factory=dict, help="named sets of key.path: value overrides")
    data: DataConfig = option(default_factory=DataConfig, help="where the data lives")
    validate: ValidateConfig = option(default_factory=ValidateConfig, help="the validate stage")
    tokenizer: TokenizerConfig = option(default_factory=TokenizerConfig, help="the tokenizer stage")
    pretrain: PretrainConfig = option(default_factory=PretrainConfig, help="the pretrain_mlm stage")
    finetune: FinetuneConfig = option(default_factory=FinetuneConfig, help="the finetune@<task> stages")
    export: ExportConfig = option(default_factory=ExportConfig, help="the export@<task> stages")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, help="MLflow tracking and registry")
    vision: VisionConfig = option(default_factory=VisionConfig, help="the image stages (issue 6)")
    gate: GateConfig = option(default_factory=GateConfig, help="quality gate before any registry alias")
    monitor: MonitorConfig = option(default_factory=MonitorConfig, help="the sentiment monitoring flow")
    route: RouteConfig = option(default_factory=RouteConfig, help="the customer-service routing flow")
    orchestration: OrchestrationConfig = option(default_factory=OrchestrationConfig,
                                                help="Prefect schedules and the local server")

    def served_task(self, section: str) -> TaskData:
        """The declared task a flow section (``monitor`` / ``route``) serves; checked when the flow starts, so a
        project without that task can still run the pipeline."""
        task = getattr(self, section).task
        _check(task in self.data.tasks, f"{section}.task",
               f"{task!r} is not a declared task; declared: {sorted(self.data.tasks)}")
        return self.data.tasks[task]

    def check(self, path: str = "") -> None:
        declared = sorted(self.data.tasks)
        unknown = sorted(set(self.validate.tables) - set(self.data.tasks))
        _check(not unknown, "validate.tables", f"rules for undeclared tasks {unknown}; declared: {declared}")
        unknown = sorted(set(self.finetune.tasks) - set(self.data.tasks))
        _check(not unknown, "finetune.tasks", f"settings for undeclared tasks {unknown}; declared: {declared}")
        for task, spec in self.finetune.tasks.items():
            _check(spec.max_length <= self.pretrain.model.max_position, f"finetune.tasks.{task}.max_length",
                   f"must be <= pretrain.model.max_position ({self.pretrain.model.max_position})")
        unknown = sorted(set(self.gate.tasks) - set(self.data.tasks))
        _check(not unknown, "gate.tasks", f"thresholds for undeclared tasks {unknown}; declared: {declared}")
        _check(IMAGE_TASK not in self.data.tasks, f"data.tasks.{IMAGE_TASK}",
               "this task name is reserved for the image encoder in the model registry; rename the text task")


# --------------------------------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Turn a YAML value into ``tp``, or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is list:
        _check(isinstance(value, list), path, f"expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        _check(isinstance(value, dict), path, f"expected a mapping, got {value!r}")
        return value
    if origin is dict:
        _check(isinstance(value, dict), path, f"expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        _check(isinstance(value, bool), path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        _check(isinstance(value, str) and value != "", path, f"expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported type {tp}")  # a bug in a dataclass, not in the user's file


def _build(cls: type, raw: Any, path: str) -> Any:
    where = path or "<root>"
    _check(isinstance(raw, dict), where, f"expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        joined = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise ConfigError(f"unknown key(s) {joined}; known keys here: {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        sub = f"{path}.{name}" if path else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required key is missing")
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def set_path(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key == "a.b.c"``, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {'.'.join(parents[: i + 1])} is not a section")
    node[leaf] = value


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to the raw mapping; the value is parsed as YAML (``3``, ``[a, b]``)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r}: expected key.path=value")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML") from None
    set_path(raw, key, value)


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the config: the file's values, then the selected preset's overrides, then ``overrides``.

    The preset can itself be chosen by an override (``preset=base``)."""
    raw = yaml.safe_load(yaml.safe_dump(raw or {}))  # deep copy through YAML types only
    for assignment in overrides:
        if assignment.partition("=")[0] == "preset":
            apply_override(raw, assignment)
    preset = raw.get("preset") or ""
    if preset:
        presets = raw.get("presets") or {}
        if preset not in presets:
            raise ConfigError(f"preset: unknown preset {preset!r}; defined under presets: {sorted(presets)}")
        _check(isinstance(presets[preset], dict), f"presets.{preset}", "expected a mapping of key.path: value")
        for key, value in presets[preset].items():
            try:
                set_path(raw, key, value)
            except ConfigError as err:
                raise ConfigError(f"presets.{preset}: {err}") from None
    for assignment in overrides:
        apply_override(raw, assignment)
    return _build(Config, raw, "")


def load_config(params: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``params`` and apply ``overrides``; errors name the file and the key path."""
    params = Path(params)
    try:
        raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{params}: no such parameters file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{params}: not valid YAML: {err}") from None
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{params}: {err}") from None


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-able form of a config (paths as strings)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key path, type, help)`` for every key, for ``selfsup config --help-keys``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        rows.append((path, getattr(tp, "__name__", str(tp)).replace("typing.", ""), f.metadata.get("help", "")))
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, path + "."))
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            rows.extend(describe_keys(typing.get_args(tp)[1], path + ".<name>."))
    return rows
