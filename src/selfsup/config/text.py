"""The text pipeline's sections: data, validate, tokenizer, pretrain, finetune, export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup.config.base import TrainLoopConfig, _check, option


@dataclass
class TaskData:
    """A labelled text-classification set: ``{dir}/{train,validation,test}.csv`` with columns ``text,label``."""

    dir: Path = option(help="folder holding train.csv, validation.csv and test.csv (columns text,label)")
    labels: list[str] = option(help="the declared label set; validation rejects any other label", min_items=2,
                               unique=True)


@dataclass
class DataConfig:
    """Where the versioned data lives. Point these at your own files to train on your own data."""

    corpus: Path = option(
        Path("data/corpus/unlabeled.jsonl"),
        help="unlabeled corpus for pretraining: JSON lines with fields source, id, text",
    )
    tasks: dict[str, TaskData] = option(
        default_factory=dict, help="labelled sets by task name (intent, sentiment, topic, or your own)",
        nonempty=True,
    )
    splits: list[str] = option(
        default_factory=lambda: ["train", "validation", "test"], help="split file names every task has",
        contains="test",
    )


@dataclass
class TableRules:
    """Validation rules for one table (the corpus or one labelled set)."""

    min_chars: int = option(1, help="shortest allowed text, in characters (after stripping)", ge=1)
    max_chars: int = option(5000, help="longest allowed text, in characters")
    max_duplicate_rate: float = option(
        0.0, help="largest allowed share of rows whose text duplicates an earlier row (case/space-insensitive)",
        ge=0, lt=1,
    )
    min_per_class: int = option(0, help="fewest examples each declared label must have in every split", ge=0)

    def check(self, path: str) -> None:
        _check(self.max_chars >= self.min_chars, f"{path}.max_chars", "must be >= min_chars")


@dataclass
class ValidateConfig:
    """The ``validate`` stage: Great Expectations suites over the corpus and every labelled set."""

    report_dir: Path = option(
        Path("artifacts/validation"), help="where the summary, the full GE results (JSON) and the HTML report go"
    )
    max_failures_shown: int = option(10, help="how many failing rows to name per rule in the error message", ge=1)
    corpus: TableRules = option(default_factory=TableRules, help="rules for the unlabeled corpus")
    tables: dict[str, TableRules] = option(
        default_factory=dict, help="rules per labelled task (keys must be tasks declared under data.tasks)"
    )


@dataclass
class TokenizerConfig:
    """The ``tokenizer`` stage: a WordPiece tokenizer trained from scratch on the unlabeled corpus."""

    vocab_size: int = option(16000, help="vocabulary size, special tokens included", ge=100)
    min_frequency: int = option(2, help="a word piece must occur this often to enter the vocabulary", ge=1)
    lowercase: bool = option(True, help="lower-case and strip accents before splitting (BERT 'uncased')")
    out_dir: Path = option(Path("models/tokenizer"), help="where tokenizer.json and the HF tokenizer files go")


@dataclass
class ModelConfig:
    """A BERT-style encoder built from this config (never from a hub checkpoint)."""

    hidden_size: int = option(256, help="width of every layer", ge=1)
    num_layers: int = option(4, help="transformer layers", ge=1)
    num_heads: int = option(4, help="attention heads (must divide hidden_size)", ge=1)
    intermediate_size: int = option(1024, help="feed-forward width", ge=1)
    max_position: int = option(128, help="longest sequence the position embeddings cover", ge=1)
    dropout: float = option(0.1, help="dropout on hidden states and attention probabilities", ge=0, lt=1)

    def check(self, path: str) -> None:
        _check(self.hidden_size % self.num_heads == 0, f"{path}.num_heads",
               f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}")


@dataclass
class PretrainConfig:
    """The ``pretrain_mlm`` stage: masked-language-model pretraining on packed sequences of the corpus."""

    model: ModelConfig = option(default_factory=ModelConfig, help="the encoder architecture")
    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    seq_len: int = option(128, help="tokens per packed training sequence ([CLS] and [SEP] included)", ge=8)
    batch_size: int = option(32, help="sequences per optimizer step", ge=1)
    accumulation_steps: int = option(1, ge=1, help="micro-batches per optimizer step (gradients summed, the same "
                                     "batch in less memory); under torchrun each process takes batch_size / "
                                     "processes, so batch_size must divide by processes x accumulation_steps")
    max_steps: int = option(1000, help="optimizer steps", ge=1)
    learning_rate: float = option(1e-3, help="peak learning rate (AdamW), after linear warm-up", gt=0)
    warmup_steps: int = option(100, help="linear warm-up steps; then linear decay to 0 at max_steps", ge=0)
    weight_decay: float = option(0.01, help="AdamW weight decay (not on biases and LayerNorm)")
    mlm_probability: float = option(0.15, help="share of tokens selected for masking (80/10/10 mask/random/keep)",
                                    gt=0, lt=1)
    source_weights: dict[str, float] = option(
        default_factory=dict,
        help="sampling weight per corpus source (e.g. tweets: 3.0); sources not named weigh 1.0", ge=0,
    )
    validation_fraction: float = option(0.01, help="share of packed sequences held out for validation loss",
                                        gt=0, lt=0.5)
    eval_every: int = option(200, help="validate every N steps (and at the end)", ge=1)
    eval_batches: int = option(10, help="validation batches per evaluation", ge=1)
    checkpoint_every: int = option(200, help="save a resumable checkpoint every N steps", ge=1)
    out_dir: Path = option(Path("models/mlm"), help="the pretrained encoder (HF format) and its checkpoint")
    metrics_dir: Path = option(Path("artifacts/pretrain"), help="metrics.json and the loss curve for DVC")

    def check(self, path: str) -> None:
        _check(self.seq_len <= self.model.max_position, f"{path}.seq_len",
               f"must be <= model.max_position ({self.model.max_position})")
        _check(self.warmup_steps < self.max_steps, f"{path}.warmup_steps", f"must be < max_steps ({self.max_steps})")
        _check(self.batch_size % self.accumulation_steps == 0, f"{path}.accumulation_steps",
               f"must divide batch_size ({self.batch_size})")


@dataclass
class SimCSEConfig:
    """The ``simcse`` stage: unsupervised contrastive sentence embeddings (two dropout views of each text) trained
    from the MLM encoder on in-domain corpus texts (``selfsup.text.simcse``)."""

    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    sources: list[str] = option(default_factory=lambda: ["tweets", "bbc_news"], min_items=1, unique=True,
                                help="corpus sources whose documents are the training texts")
    max_texts: int = option(20000, help="at most this many texts (a seeded sample)", ge=2)
    max_length: int = option(64, help="tokens per text (truncated)", ge=8)
    batch_size: int = option(64, help="texts per step; the other texts of the batch are the negatives", ge=2)
    max_steps: int = option(300, help="optimizer steps", ge=1)
    learning_rate: float = option(1e-4, help="peak learning rate (AdamW), after linear warm-up", gt=0)
    warmup_steps: int = option(30, help="linear warm-up steps; then linear decay to 0", ge=0)
    weight_decay: float = option(0.0, help="AdamW weight decay", ge=0)
    temperature: float = option(0.05, help="softmax temperature of the cosine similarities", gt=0)
    dropout: float = option(0.1, help="dropout during this stage: the only noise between the two views", gt=0, lt=1)
    out_dir: Path = option(Path("models/simcse"), help="the sentence encoder (HF format) and its tokenizer")
    metrics_dir: Path = option(Path("artifacts/simcse"), help="metrics.json and the loss curve for DVC")

    def check(self, path: str) -> None:
        _check(self.warmup_steps < self.max_steps, f"{path}.warmup_steps", f"must be < max_steps ({self.max_steps})")
        _check(self.batch_size <= self.max_texts, f"{path}.batch_size",
               f"must be <= max_texts ({self.max_texts}): a batch larger than the data, got {self.batch_size}")


# the indexes the exported embedder carries: served name -> folder the retrieval stage writes under retrieval.out_dir
EMBEDDER_INDEXES = {"answers": "knowledge_base", "articles": "articles"}


@dataclass
class EmbedderExportConfig:
    """The served embedder (``export_embedder`` stage): the SimCSE encoder as ONNX beside its tokenizer and both
    indexes, checked against PyTorch. The ONNX opset and graph fusion are ``export.opset`` / ``export.ort_fusion``."""

    out_dir: Path = option(Path("models/onnx/embedder"), help="model.onnx, tokenizer.json, embedder.json and the "
                           "answers / articles indexes: what the service's /v1/answer and /v1/similar load")
    metrics_dir: Path = option(Path("artifacts/export_embedder"), help="the parity report (metrics.json)")
    registered_model: str = option("selfsup-embedder", help="registry name of the exported embedder and its indexes")
    min_top1_agreement: float = option(
        0.98, gt=0, le=1, help="share of test queries whose nearest index entry is the same with onnxruntime as with "
                               "PyTorch; below it the export fails and nothing is written")
    max_abs_diff: float = option(1e-3, gt=0, help="largest |difference| of an embedding component (unit vectors) "
                                                  "between onnxruntime and PyTorch; above it the export fails")
    parity_articles: int = option(100, ge=1, help="test articles embedded both ways for the parity check (besides "
                                                  "every test message)")


@dataclass
class RetrievalConfig:
    """Answer retrieval and related articles (``selfsup.text.retrieval``): three embedding methods side by side."""

    simcse: SimCSEConfig = option(default_factory=SimCSEConfig, help="the simcse stage")
    knowledge_base: Path = option(Path("annotations/kb/airline_help.csv"),
                                  help="id,intent,question,answer: the answers a new message is matched against")
    kb_text: str = option("question", choices=("question", "question_answer"),
                          help="what of a knowledge-base entry is embedded (chosen on the validation messages)")
    messages_task: str = option("intent", help="the task whose messages query the knowledge base (labels = intents)")
    articles_task: str = option("topic", help="the task whose articles are recommended (labels = topics)")
    max_length: int = option(128, help="tokens per text (chunk) when embedding", ge=8)
    chunk_words: int = option(80, help="a longer text is embedded as the mean of chunks of this many words", ge=8)
    max_chunks: int = option(8, help="at most this many chunks per text (the rest is not read)", ge=1)
    top_k: int = option(10, help="neighbours kept per query (MRR@k)", ge=5)
    out_dir: Path = option(Path("models/index"), help="the served indexes (SimCSE embeddings of the knowledge base "
                           "and the articles)")
    metrics_dir: Path = option(Path("artifacts/retrieval"), help="metrics.json per method, for DVC and MLflow")
    export: EmbedderExportConfig = option(default_factory=EmbedderExportConfig,
                                          help="the served embedder: ONNX encoder + indexes (export_embedder stage)")


@dataclass
class SelfTrainingConfig:
    """Semi-supervised fine-tuning of the pretrained arm (``selfsup.text.self_training``): a labeler trained on the
    labels pseudo-labels unlabeled in-domain texts, and a second fine-tuning of the pretrained encoder trains on
    labels + confident pseudo-labels; the result is kept only if it beats the plain fine-tuning on validation."""

    enabled: bool = option(False, help="self-train the pretrained arm (the from-scratch and classical arms never see "
                                       "unlabeled data)")
    labeler: str = option("model", choices=("model", "classical"),
                          help="who pseudo-labels the pool: 'model', the fine-tuned pretrained model itself "
                               "(self-training; a pseudo-label needs `confidence`), or 'classical', a TF-IDF + linear "
                               "model (finetune.classical's grid) fitted on the same labels, a second view of the "
                               "text (co-training; a pseudo-label needs `min_margin`)")
    pool: str = option("corpus", choices=("corpus", "train_beyond_cap"),
                       help="where the unlabeled texts come from: 'corpus', the corpus documents of `sources`; "
                            "'train_beyond_cap', the task's training texts that max_train_examples leaves out, "
                            "their labels ignored (a task with more labelled texts than the budget trains on)")
    sources: list[str] = option(default_factory=lambda: ["tweets"], min_items=1, unique=True,
                                help="pool 'corpus': corpus sources whose documents form the unlabeled pool")
    max_pool: int = option(20000, ge=1, help="unlabeled texts the labeler classifies (a seeded sample of the pool)")
    confidence: float = option(0.9, gt=0, le=1, help="labeler 'model': a pseudo-label needs at least this top "
                                                     "probability")
    min_margin: float = option(0.0, ge=0, help="labeler 'classical': a pseudo-label needs its top decision score to "
                                               "lead the runner-up by more than this")
    max_per_class: int = option(500, ge=1, help="most pseudo-labels kept per class, the most confident first "
                                               "(so the majority class cannot flood the student)")
    student_epochs: int = option(0, ge=0, help="the student's passes over labels + pseudo-labels; 0: as many "
                                               "optimizer steps as the plain fine-tuning (its epochs x its batches / "
                                               "the student's batches per epoch, rounded, at least 1)")


@dataclass
class FinetuneTaskConfig:
    """Fine-tuning one labelled task; the same settings train the from-scratch baseline."""

    epochs: int = option(3, help="passes over the (possibly capped) training set", ge=1)
    batch_size: int = option(32, help="examples per optimizer step", ge=1)
    learning_rate: float = option(1e-4, help="peak learning rate (AdamW) for the pretrained model", gt=0)
    scratch_learning_rate: float = option(5e-4, help="peak learning rate for the from-scratch baseline", gt=0)
    warmup_ratio: float = option(0.1, help="share of steps used for linear warm-up", ge=0, lt=1)
    weight_decay: float = option(0.01, help="AdamW weight decay")
    max_length: int = option(64, help="tokens per example (longer texts are truncated)", ge=1)
    chunk_words: int = option(0, help="0: a text is read as its first max_length tokens. N > 0: a long text (a news "
                                      "article) is read as pieces of N words, each cut at max_length tokens: every "
                                      "piece is a training example with the text's label, and a prediction (on "
                                      "validation, test, in export and serving) is the mean of the pieces' "
                                      "log-probabilities (selfsup.text.chunking)", ge=0)
    max_chunks: int = option(1, help="at most this many pieces per text when chunk_words > 0 (the rest is not read)",
                             ge=1)
    max_train_examples: int = option(0, help="cap on training examples, stratified (0 = all)", ge=0)
    validate_every: int = option(1, help="validate (and keep the best model) every N epochs and after the last; the "
                                         "label-efficiency runs on a small share of the labels, which take many "
                                         "short epochs, raise it to validate as often as the committed setting",
                                 ge=1)
    out_dir: Path = option(Path("models/finetune"), help="where the two classifiers go (<out_dir>/<task>/...)")
    self_training: SelfTrainingConfig = option(default_factory=SelfTrainingConfig,
                                               help="semi-supervised fine-tuning of the pretrained arm")

    def check(self, path: str) -> None:
        # the data size itself is checked when the stage starts (selfsup.config.preflight)
        _check(not self.max_train_examples or self.batch_size <= self.max_train_examples, f"{path}.batch_size",
               f"must be <= max_train_examples ({self.max_train_examples}): a batch larger than the data, "
               f"got {self.batch_size}")
        st = self.self_training
        _check(not (st.enabled and st.pool == "train_beyond_cap") or self.max_train_examples > 0,
               f"{path}.self_training.pool", "'train_beyond_cap' needs max_train_examples > 0: with no cap every "
                                             "training text is a label and none is left unlabeled")


CLASSICAL_FEATURES = ("word", "char", "word+char")
CLASSICAL_MODELS = ("logreg", "linear_svc")


@dataclass
class ClassicalConfig:
    """The ``finetune_classical@<task>`` stages: the baseline a practitioner tries first, TF-IDF n-grams + a linear
    classifier (scikit-learn), trained on exactly the labels the neural arms get. Every combination of the lists
    below is fitted on train and scored on validation; the best macro-F1 is kept."""

    features: list[str] = option(
        default_factory=lambda: list(CLASSICAL_FEATURES), choices=CLASSICAL_FEATURES, min_items=1, unique=True,
        help="feature sets to try: word (word 1-2-grams), char (char 2-5-grams within word boundaries), word+char")
    models: list[str] = option(default_factory=lambda: list(CLASSICAL_MODELS), choices=CLASSICAL_MODELS, min_items=1,
                               unique=True, help="linear classifiers to try: logreg, linear_svc")
    c_grid: list[float] = option(default_factory=lambda: [0.1, 1.0, 10.0], gt=0, min_items=1, unique=True,
                                 help="inverse regularisation strengths C to try")
    class_weights: list[str] = option(default_factory=lambda: ["none", "balanced"], choices=("none", "balanced"),
                                      min_items=1, unique=True, help="class weighting to try (balanced helps macro-F1 "
                                                                     "on skewed label sets)")
    min_df: int = option(2, help="an n-gram must occur in this many training texts to become a feature", ge=1)
    out_dir: Path = option(Path("models/classical"), help="where each task's fitted pipeline goes (<out_dir>/<task>/)")


@dataclass
class LabelEfficiencyConfig:
    """The ``label_efficiency`` stage: each task's three arms (pretrained, scratch, classical) re-trained on a
    stratified share of the training labels, for several seeds, scored on the test split. The 100 % point with the
    pipeline's seed is the evaluate stage's (the same models), so it costs nothing here."""

    tasks: list[str] = option(default_factory=list, unique=True,
                              help="tasks to measure (with settings under finetune.tasks); empty: all of them")
    fractions: list[float] = option(default_factory=lambda: [0.1, 1.0], gt=0, le=1, min_items=1, unique=True,
                                    help="shares of the training labels (of max_train_examples where that caps them)")
    seeds: list[int] = option(default_factory=lambda: [1234], min_items=1, unique=True,
                              help="seeds per share: the label sample, initialisation and batch order")
    max_steps: int = option(
        0, ge=0, help="optimizer steps per run: a smaller label set is trained for more epochs, up to the committed "
                      "setting's steps (epochs x batches of the full label set), capped at this (0: no cap)")
    out_dir: Path = option(Path("artifacts/label_efficiency"), help="metrics.json, runs.csv and the plot")


@dataclass
class FinetuneConfig:
    """The ``finetune@<task>``, ``finetune_classical@<task>`` and ``label_efficiency`` stages."""

    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    tasks: dict[str, FinetuneTaskConfig] = option(default_factory=dict, help="settings per labelled task")
    classical: ClassicalConfig = option(default_factory=ClassicalConfig,
                                        help="the classical baseline arm (TF-IDF + linear model)")
    label_efficiency: LabelEfficiencyConfig = option(default_factory=LabelEfficiencyConfig,
                                                     help="the three arms at shares of the training labels")


@dataclass
class ExportConfig:
    """The ``export@<task>`` stages: ONNX export, parity check against PyTorch, registration."""

    out_dir: Path = option(Path("models/onnx"), help="ONNX model, tokenizer and label map per task")
    opset: int = option(18, help="ONNX opset")
    min_label_agreement: float = option(0.999, help="fail if onnxruntime and PyTorch agree on fewer test labels",
                                        gt=0, le=1)
    max_abs_logit_diff: float = option(1e-3, help="fail if any logit differs by more than this", gt=0)
    registered_model_prefix: str = option("selfsup", help="models register as <prefix>-<task>")
    ort_fusion: bool = option(True, help="rewrite the graph with onnxruntime's fused kernels (attention, skip layer "
                              "norm, GELU; onnxscript's ort_fusions) before the parity check: 1.2-1.8x faster on "
                              "CPU (measured), runnable by onnxruntime only")
    serve_precision: str = option(
        "auto", choices=("fp32", "int8", "auto"),
        help="what the export folder's model.onnx (the served, registered file) is: fp32; int8 (dynamic INT8 "
             "quantization; the export fails when it fails its int8_* check); auto (INT8 when it passes that check, "
             "FP32 otherwise). The other precision is kept beside it (model.int8.onnx / model.fp32.onnx) and "
             "export.json reports both; measured in benchmarks/RESULTS.md (benchmarks/inference.py)")
    int8_min_label_agreement: float = option(0.99, gt=0, le=1, help="INT8 may be served only if it predicts the "
                                             "same label as PyTorch on at least this share of the test split")
    int8_max_abs_logit_diff: float = option(1.0, gt=0, help="INT8 may be served only if no test logit differs from "
                                            "PyTorch's by more than this: a guard against a broken graph (int8 "
                                            "rounding moves logits by about 0.1)")
    int8_max_accuracy_drop: float = option(0.005, ge=0, le=1, help="INT8 may be served only if its test accuracy "
                                           "is at most this much below the FP32 graph's (0.005 = half a point)")
