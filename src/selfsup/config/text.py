"""The text pipeline's sections: data, validate, tokenizer, pretrain, finetune, export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup.config.base import TrainLoopConfig, _check, option


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
