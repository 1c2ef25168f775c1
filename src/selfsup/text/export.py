"""ONNX export of a fine-tuned classifier, checked against PyTorch before anything may use it.

``export_classifier`` writes, atomically, a self-contained folder that ``selfsup.serve.predict`` serves with
onnxruntime alone:

    model.onnx       dynamic batch and sequence axes; inputs input_ids, attention_mask [B, L] int64; logits [B, C]
    tokenizer.json   the WordPiece tokenizer (``tokenizers`` format)
    labels.json      label names in logit order
    export.json      max_length, opset, the onnxruntime fusions applied, parity numbers

With ``ort_fusion`` the graph is rewritten with onnxruntime's fused kernels (``fuse_for_onnxruntime``): faster, and
runnable by onnxruntime only. Parity: the exported graph passes ``onnx.checker`` (before the fusion), then
onnxruntime and PyTorch score the whole test split; the
maximum |Δlogit| and the share of identical predicted labels are reported, and the export fails (nothing is
written) when agreement is below ``min_label_agreement`` or the difference above ``max_abs_logit_diff``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from selfsup.onnx_parity import check_parity


@dataclass
class ExportResult:
    onnx_path: str
    test_examples: int
    max_abs_logit_diff: float
    label_agreement: float
    onnx_bytes: int


class _LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) -> logits``: the signature the ONNX graph exposes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model, path: Path, max_length: int, opset: int) -> None:
    """torch.export-based ONNX export with dynamic batch and sequence axes, weights inside the one file."""
    wrapper = _LogitsOnly(model.eval()).eval()
    example = torch.full((2, 8), 5, dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=max_length)
    torch.onnx.export(
        wrapper, (example, torch.ones_like(example)), str(path), input_names=["input_ids", "attention_mask"],
        output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        external_data=False, opset_version=opset, verbose=False,
    )


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


def export_classifier(model_dir: Path, labels: list[str], test_texts: list[str], max_length: int, out_dir: Path,
                      opset: int, min_label_agreement: float, max_abs_logit_diff: float,
                      ort_fusion: bool = False) -> ExportResult:
    import onnx
    from selfsup.fileio import replace_dir, staging_dir
    from selfsup.text.model import load_classifier, predict_logits
    from selfsup.text.tokenizer import load_tokenizer
    from selfsup.serve.predict import OnnxClassifier

    model = load_classifier(model_dir).eval()
    stored = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if stored != list(labels):
        raise ValueError(f"{model_dir}: the model's labels {stored} differ from the declared labels {labels}")
    tmp = staging_dir(out_dir)
    try:
        export_onnx(model, tmp / "model.onnx", max_length, opset)
        onnx.checker.check_model(onnx.load(str(tmp / "model.onnx")), full_check=True)  # before contrib ops
        fusions = fuse_for_onnxruntime(tmp / "model.onnx") if ort_fusion else {}
        shutil.copy(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "labels.json").write_text(json.dumps(list(labels)))
        (tmp / "export.json").write_text(json.dumps({"max_length": max_length, "opset": opset}))

        reference = predict_logits(model, load_tokenizer(model_dir), test_texts, max_length, torch.device("cpu"))
        exported = torch.from_numpy(OnnxClassifier(tmp).logits(test_texts))
        diff = float((reference - exported).abs().max())
        agreement = float((reference.argmax(-1) == exported.argmax(-1)).float().mean())
        result = ExportResult(str(out_dir / "model.onnx"), len(test_texts), diff, agreement,
                              (tmp / "model.onnx").stat().st_size)
        check_parity(model_dir, agreement, diff, min_label_agreement, max_abs_logit_diff, diff_name="Δlogit")
        (tmp / "export.json").write_text(json.dumps({"max_length": max_length, "opset": opset,
                                                     "ort_fusions": fusions, **asdict(result)}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    return result
