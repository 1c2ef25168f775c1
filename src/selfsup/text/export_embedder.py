"""ONNX export of the SimCSE sentence embedder together with the indexes it searches, checked against PyTorch.

``export_embedder`` writes, atomically, the folder the service's ``/v1/answer`` and ``/v1/similar`` load
(``selfsup.serve.runtime.EmbedderModel``, onnxruntime and tokenizers only):

    model.onnx       inputs input_ids, attention_mask [B, L] int64 -> sentence_embedding [B, H] (masked mean pool, unit norm)
    tokenizer.json   the WordPiece tokenizer
    embedder.json    max_length, chunk_words, max_chunks, the index names, the fusions applied, parity numbers
    answers.npy / answers.jsonl     the knowledge base: vectors [N, H] and one entry per line (id, intent, ...)
    articles.npy / articles.jsonl   the indexed articles: vectors [M, H] and topic + opening text per line

The indexes are the retrieval stage's (``models/index``: embedded by the PyTorch encoder), so the served answers
are the measured ones. Parity: every test message and ``parity_articles`` test articles are embedded by PyTorch (the
retrieval stage's ``EncoderEmbedder``) and by the exported folder through the service's own code; the largest
|Δ| of an embedding component and the share of queries whose nearest index entry is the same are reported, and the
export fails (nothing is written) when either is out of bounds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.config import EMBEDDER_INDEXES as INDEXES


class ExportParityError(RuntimeError):
    """The exported embedder does not agree with PyTorch; the message gives both numbers and their limits."""


@dataclass
class EmbedderExportResult:
    out_dir: str
    dim: int
    queries: int
    max_abs_diff: float
    top1_agreement: dict[str, float]  # per index
    fusions: dict[str, int]
    onnx_bytes: int


class _UnitMeanPooled(torch.nn.Module):
    """``(input_ids, attention_mask) [B, L] -> sentence_embedding [B, H]``: masked mean of the last hidden states, L2-normalised
    (what ``selfsup.text.simcse.embed_texts`` computes)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        from selfsup.text.model import mean_pool

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)


def export_embedder(encoder_dir: Path, index_dir: Path, out_dir: Path, queries: dict[str, list[str]],
                    max_length: int, chunk_words: int, max_chunks: int, opset: int, ort_fusion: bool,
                    min_top1_agreement: float, max_abs_diff: float) -> EmbedderExportResult:
    """Export the encoder in ``encoder_dir`` with the indexes in ``index_dir`` to ``out_dir``. ``queries`` maps
    each served index name to the texts its parity is checked on."""
    import onnx

    from selfsup.fileio import replace_dir, staging_dir
    from selfsup.serve.runtime import EmbedderModel
    from selfsup.text.export import export_text_graph, fuse_for_onnxruntime
    from selfsup.text.retrieval import EncoderEmbedder, VectorIndex

    unknown = sorted(set(queries) - set(INDEXES))
    if unknown:
        raise ValueError(f"parity queries for unknown indexes {unknown}; the indexes are {sorted(INDEXES)}")
    reference = EncoderEmbedder("simcse", Path(encoder_dir), max_length, chunk_words, max_chunks)
    tmp = staging_dir(Path(out_dir))
    export_text_graph(_UnitMeanPooled(reference.encoder.eval()), tmp / "model.onnx", "sentence_embedding", max_length,
                      opset)
    onnx.checker.check_model(str(tmp / "model.onnx"))
    fusions = fuse_for_onnxruntime(tmp / "model.onnx") if ort_fusion else {}
    reference.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    for name, folder in INDEXES.items():
        VectorIndex.load(Path(index_dir) / folder).write(tmp, name)
    meta = {"max_length": max_length, "chunk_words": chunk_words, "max_chunks": max_chunks,
            "indexes": list(INDEXES), "opset": opset, "ort_fusions": fusions}
    (tmp / "embedder.json").write_text(json.dumps(meta, indent=1))

    served = EmbedderModel(tmp, intra_op_threads=max(1, torch.get_num_threads()))
    worst, agreement = 0.0, {}
    for name, texts in queries.items():
        ours, theirs = served.embed_texts(texts), reference.embed(texts)  # [N, H] each
        worst = max(worst, float(np.abs(ours - theirs).max()))
        index = served.indexes[name]
        agreement[name] = float((index.search(ours, 1)[0][:, 0] == index.search(theirs, 1)[0][:, 0]).mean())
    failures = [f"max |Δembedding| {worst:.2e} > {max_abs_diff:.2e} (retrieval.export.max_abs_diff)"] \
        if worst > max_abs_diff else []
    failures += [f"{name}: nearest entry agrees on {share:.3f} of the queries < {min_top1_agreement} "
                 f"(retrieval.export.min_top1_agreement)" for name, share in agreement.items()
                 if share < min_top1_agreement]
    if failures:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportParityError("the exported embedder disagrees with PyTorch: " + "; ".join(failures))
    result = EmbedderExportResult(str(out_dir), served.dim, sum(map(len, queries.values())), worst, agreement,
                                  fusions, (tmp / "model.onnx").stat().st_size)
    (tmp / "embedder.json").write_text(json.dumps({**meta, "parity": asdict(result)}, indent=1))
    replace_dir(tmp, Path(out_dir))
    return result
