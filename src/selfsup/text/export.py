"""ONNX export of a fine-tuned classifier, checked against PyTorch before anything may use it.

``export_classifier`` writes, atomically, a self-contained folder that ``selfsup.serve.predict`` serves with
onnxruntime alone:

    model.onnx       the graph to serve: dynamic batch and sequence axes; inputs input_ids, attention_mask [B, L]
                     int64; logits [B, C]. FP32, or dynamic INT8 when ``int8`` is given and chooses it (below)
    model.int8.onnx  with ``int8``, when model.onnx is the FP32 graph: the INT8 graph, kept beside it for comparison
    model.fp32.onnx  with ``int8``, when model.onnx is the INT8 graph: the FP32 graph it was quantized from
    tokenizer.json   the WordPiece tokenizer (``tokenizers`` format)
    labels.json      label names in logit order
    export.json      max_length, chunk_words / max_chunks (how long texts are read), opset, the onnxruntime
                     fusions applied, parity numbers, which file is which precision

The service, the pyfunc and the registry read ``model.onnx`` only, so they serve whichever precision the export
chose without knowing about it.

With ``ort_fusion`` the graph is rewritten with onnxruntime's fused kernels (``fuse_for_onnxruntime``): faster, and
runnable by onnxruntime only. Parity: the exported graph passes ``onnx.checker`` (before the fusion), then
onnxruntime and PyTorch score the whole test split; the
maximum |Δlogit| and the share of identical predicted labels are reported, and the export fails (nothing is
written) when agreement is below ``min_label_agreement`` or the difference above ``max_abs_logit_diff``.

INT8 (``int8=Int8Gate(...)``): ``quantize_int8`` (onnxruntime's dynamic quantization: int8 weights, activations
quantized per call) of the checked FP32 graph, *before* the fusion — quantizing the fused graph leaves the
query/key/value projections in FP32, because onnxruntime's quantizer does not handle the fused ``Attention`` with
``qkv_hidden_sizes`` (13 of 25 MatMuls quantized instead of 25, measured on the intent model), while the fusion
rewriter still fuses attention (as MultiHeadAttention), layer norms and GELU around the quantized MatMuls. The INT8
graph goes through its own gate: label agreement with PyTorch, max |Δlogit| and the test-accuracy drop against the
FP32 graph (accuracy and macro-F1 of both are reported). ``Int8Gate.serve_precision`` picks what ``model.onnx`` is:
``fp32``; ``int8`` (the export fails when INT8 fails its gate); ``auto`` (INT8 when it passes, FP32 otherwise).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from selfsup.onnx_parity import ExportParityError, check_parity

SERVE_PRECISIONS = ("fp32", "int8", "auto")


@dataclass
class ExportResult:
    onnx_path: str  # the served model.onnx
    test_examples: int
    max_abs_logit_diff: float  # the FP32 graph against PyTorch: the parity gate's numbers
    label_agreement: float
    onnx_bytes: int  # size of the served model.onnx
    serve_precision: str = "fp32"  # what model.onnx is: fp32 | int8
    # per precision built: file, onnx_bytes, label_agreement, max_abs_logit_diff (against PyTorch), accuracy,
    # macro_f1 (test split; null without test labels); INT8 adds its gate: passed, failures, quantized_matmuls
    precisions: dict[str, dict] = field(default_factory=dict)
    pytorch_scores: dict[str, float] | None = None  # accuracy, macro_f1 of PyTorch on the test split


@dataclass(frozen=True)
class Int8Gate:
    """Whether the dynamic INT8 graph may be served (``ExportConfig``'s ``serve_precision`` and ``int8_*``)."""

    serve_precision: str = "auto"  # fp32 | int8 (fail when INT8 fails the gate) | auto (INT8 when it passes)
    min_label_agreement: float = 0.99  # INT8 against PyTorch, share of identical test labels
    max_abs_logit_diff: float = 1.0  # INT8 against PyTorch: a broken-graph guard, rounding moves logits ~0.1
    max_accuracy_drop: float = 0.005  # FP32 test accuracy - INT8 test accuracy (0.005 = half a point)

    def __post_init__(self):
        if self.serve_precision not in SERVE_PRECISIONS:
            raise ValueError(f"serve_precision must be one of {list(SERVE_PRECISIONS)}, got {self.serve_precision!r}")

    @classmethod
    def of(cls, export_cfg) -> "Int8Gate":
        """From the ``export`` config section."""
        return cls(export_cfg.serve_precision, export_cfg.int8_min_label_agreement,
                   export_cfg.int8_max_abs_logit_diff, export_cfg.int8_max_accuracy_drop)

    def failures(self, int8: dict, fp32: dict) -> list[str]:
        """Each rule ``int8`` (a precision report) breaks, in words; empty when it may be served."""
        broken = []
        if int8["label_agreement"] < self.min_label_agreement:
            broken.append(f"label agreement with PyTorch {int8['label_agreement']:.4%} < int8_min_label_agreement "
                          f"{self.min_label_agreement:.4%}")
        if int8["max_abs_logit_diff"] > self.max_abs_logit_diff:
            broken.append(f"max |Δlogit| {int8['max_abs_logit_diff']:.3g} > int8_max_abs_logit_diff "
                          f"{self.max_abs_logit_diff:g}")
        drop = fp32["accuracy"] - int8["accuracy"]
        if drop > self.max_accuracy_drop + 1e-12:  # 1e-12: equal accuracies computed two ways must not fail
            broken.append(f"test accuracy {fp32['accuracy']:.4f} (FP32) -> {int8['accuracy']:.4f} (INT8), a drop of "
                          f"{drop:.4f} > int8_max_accuracy_drop {self.max_accuracy_drop:g}")
        return broken


class _LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) -> logits``: the signature the ONNX graph exposes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_text_graph(module: torch.nn.Module, path: Path, output: str, max_length: int, opset: int) -> None:
    """torch.export-based ONNX export of ``module(input_ids, attention_mask)`` [B, L] -> ``output``, with dynamic
    batch and sequence axes, weights inside the one file."""
    wrapper = module.eval()
    example = torch.full((2, 8), 5, dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=max_length)
    with warnings.catch_warnings():
        # both inputs share the batch and seq axes on purpose; torch warns once per shared axis that it keeps the
        # name it already gave (the graph's axes are still named batch and seq)
        warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used", category=UserWarning)
        torch.onnx.export(
            wrapper, (example, torch.ones_like(example)), str(path), input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=False, opset_version=opset, verbose=False,
        )


def export_onnx(model, path: Path, max_length: int, opset: int) -> None:
    """The classifier's graph: ``(input_ids, attention_mask) -> logits`` (``export_text_graph``)."""
    export_text_graph(_LogitsOnly(model.eval()), path, "logits", max_length, opset)


def fuse_for_onnxruntime(path: Path) -> dict[str, int]:
    """Rewrite ``path`` in place with onnxruntime's fused contrib kernels (Attention, SkipLayerNormalization,
    BiasGelu: onnxscript's ``ort_fusions``, which understands the torch.export graph where
    ``onnxruntime.transformers.optimizer`` does not). Returns how many of each fusion were applied."""
    import onnx
    import onnxscript
    from onnxscript.rewriter import ort_fusions

    model = onnxscript.ir.serde.deserialize_model(onnx.load(str(path)))
    model, counts = ort_fusions.optimize_for_ort(model)
    onnx.save(onnxscript.ir.serde.serialize_model(model), str(path))
    return {name: int(n) for name, n in counts.items() if n}


class _DropPreprocessingAdvice(logging.Filter):
    """``quantize_dynamic`` advises, on the root logger at every call, to run onnxruntime's pre-processing (shape
    inference and graph optimisation, for static quantization's calibration); dynamic MatMul quantization of this
    graph does not need it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: Path, dst: Path, per_channel: bool = False, reduce_range: bool = False) -> int:
    """Dynamic INT8 quantization of ``src`` into ``dst``: every MatMul with a constant weight gets int8 weights
    (signed, symmetric; per tensor unless ``per_channel``) and quantizes its activation per call. Returns the
    number of quantized MatMuls.

    MatMul only: quantizing the embedding lookups (``Gather``, onnxruntime's default set) as well cost 0.4-0.7
    accuracy points and 1.7-3.7 macro-F1 points on the intent test split, for a smaller file and no measured
    speed; the MatMul-only graph predicted the same labels as PyTorch on all 271 test texts. ``reduce_range``
    (7-bit weights) is for CPUs without VNNI instructions."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = _DropPreprocessingAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeFilter(quiet)
    return sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in onnx.load(str(dst)).graph.node)


def classification_scores_of(logits, gold: list[int]) -> dict[str, float]:
    """Test accuracy and macro-F1 of ``logits`` [N, C] against ``gold`` label indices."""
    from selfsup.metrics import classification_scores

    return classification_scores(gold, logits.argmax(-1).tolist())


def _report(file: Path, logits, reference, gold: list[int] | None) -> dict:
    """One precision's numbers: its file and size, its logits [N, C] against PyTorch's ``reference`` and, when
    given, the gold labels."""
    scores = classification_scores_of(logits, gold) if gold is not None else {"accuracy": None, "macro_f1": None}
    return {"file": file.name, "onnx_bytes": file.stat().st_size,
            "label_agreement": float((reference.argmax(-1) == logits.argmax(-1)).float().mean()),
            "max_abs_logit_diff": float((reference - logits).abs().max()), **scores}


def export_classifier(model_dir: Path, labels: list[str], test_texts: list[str], max_length: int, out_dir: Path,
                      opset: int, min_label_agreement: float, max_abs_logit_diff: float,
                      ort_fusion: bool = False, *, test_labels: list[str] | None = None,
                      int8: Int8Gate | None = None, chunk_words: int = 0, max_chunks: int = 1) -> ExportResult:
    """Export, check and write ``out_dir`` (see the module doc). ``test_labels`` (gold labels of ``test_texts``)
    add test accuracy and macro-F1 to the report; ``int8`` builds the INT8 graph too and needs them.
    ``chunk_words`` / ``max_chunks``: how the model reads long texts (``predict_logits``); written to export.json so
    every onnxruntime client reads them the same way, and the parity check compares the pooled predictions."""
    import onnx
    import onnxruntime as ort
    from selfsup.fileio import replace_dir, staging_dir
    from selfsup.text.model import load_classifier, predict_logits
    from selfsup.text.tokenizer import load_tokenizer
    from selfsup.serve.predict import OnnxClassifier

    model = load_classifier(model_dir).eval()
    stored = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if stored != list(labels):
        raise ValueError(f"{model_dir}: the model's labels {stored} differ from the declared labels {labels}")
    if test_labels is not None:
        if len(test_labels) != len(test_texts):
            raise ValueError(f"{len(test_labels)} test labels for {len(test_texts)} test texts")
        unknown = sorted(set(test_labels) - set(labels))
        if unknown:
            raise ValueError(f"test labels {unknown} are not among the declared labels {labels}")
    if int8 is not None and test_labels is None:
        raise ValueError("the INT8 graph is gated on test accuracy: pass test_labels with int8")
    gold = [labels.index(y) for y in test_labels] if test_labels is not None else None
    tmp = staging_dir(out_dir)
    try:
        fp32_path, int8_path = tmp / "model.onnx", tmp / "model.int8.onnx"
        export_onnx(model, fp32_path, max_length, opset)
        onnx.checker.check_model(onnx.load(str(fp32_path)), full_check=True)  # before contrib ops
        if int8 is not None:  # quantized before the fusion: see the module doc
            quantized_matmuls = quantize_int8(fp32_path, int8_path)
            onnx.checker.check_model(onnx.load(str(int8_path)), full_check=True)
        fusions = fuse_for_onnxruntime(fp32_path) if ort_fusion else {}
        int8_fusions = fuse_for_onnxruntime(int8_path) if ort_fusion and int8 is not None else {}
        shutil.copy(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "labels.json").write_text(json.dumps(list(labels)))
        reading = {"max_length": max_length, "chunk_words": chunk_words, "max_chunks": max_chunks}
        (tmp / "export.json").write_text(json.dumps({**reading, "opset": opset}))

        tokenizer = load_tokenizer(model_dir)
        reference = predict_logits(model, tokenizer, test_texts, max_length, torch.device("cpu"),
                                   chunk_words=chunk_words, max_chunks=max_chunks)
        classifier = OnnxClassifier(tmp)  # the served tokenization and padding, for both graphs
        fp32 = _report(fp32_path, torch.from_numpy(classifier.logits(test_texts)), reference, gold)
        result = ExportResult(str(out_dir / "model.onnx"), len(test_texts), fp32["max_abs_logit_diff"],
                              fp32["label_agreement"], fp32["onnx_bytes"], "fp32", {"fp32": fp32},
                              (classification_scores_of(reference, gold) if gold is not None else None))
        check_parity(model_dir, fp32["label_agreement"], fp32["max_abs_logit_diff"], min_label_agreement,
                     max_abs_logit_diff, diff_name="Δlogit")
        if int8 is not None:
            classifier.session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
            report = _report(int8_path, torch.from_numpy(classifier.logits(test_texts)), reference, gold)
            failures = int8.failures(report, fp32)
            result.precisions["int8"] = {**report, "quantized_matmuls": quantized_matmuls, "ort_fusions": int8_fusions,
                                         "gate": asdict(int8), "passed": not failures, "failures": failures}
            if int8.serve_precision == "int8" and failures:
                raise ExportParityError(f"INT8 check failed for {model_dir} (export.serve_precision=int8): "
                                        + "; ".join(failures))
            if int8.serve_precision != "fp32" and not failures:  # the INT8 graph becomes model.onnx
                fp32_path.rename(tmp / "model.fp32.onnx")
                int8_path.rename(tmp / "model.onnx")
                result.serve_precision = "int8"
                result.onnx_bytes = (tmp / "model.onnx").stat().st_size
                result.precisions["fp32"]["file"], result.precisions["int8"]["file"] = "model.fp32.onnx", "model.onnx"
        (tmp / "export.json").write_text(json.dumps({**reading, "opset": opset, "ort_fusions": fusions,
                                                     **asdict(result)}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    return result

