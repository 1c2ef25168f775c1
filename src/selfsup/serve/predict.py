"""Classify text with an exported model using onnxruntime and tokenizers only — no torch on this path.

An exported model folder holds ``model.onnx``, ``tokenizer.json`` and ``labels.json`` (and ``export.json`` with
``max_length`` and, for a model that reads long texts in pieces, ``chunk_words`` / ``max_chunks``); see
``selfsup.text.export``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Prediction:
    text: str
    label: str
    confidence: float
    scores: dict[str, float]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def flatten_pieces(per_text: list[list[list[int]]]) -> tuple[list[list[int]], list[int]]:
    """The pieces of all texts in one list, and each piece's text index."""
    pieces = [ids for text_pieces in per_text for ids in text_pieces]
    owner = [i for i, text_pieces in enumerate(per_text) for _ in text_pieces]
    return pieces, owner


class OnnxClassifier:
    """An exported classifier: ``OnnxClassifier(folder).predict(["text", ...])``."""

    def __init__(self, folder: Path, providers: list[str] | None = None, session_options=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        for name in ("model.onnx", "tokenizer.json", "labels.json"):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} is missing: not an exported selfsup model folder")
        meta = json.loads((folder / "export.json").read_text()) if (folder / "export.json").exists() else {}
        self.max_length = int(meta.get("max_length", 128))
        # 0: a text is one sequence cut at max_length; > 0: pieces of chunk_words words (selfsup.text.chunking)
        self.chunk_words = int(meta.get("chunk_words", 0))
        self.max_chunks = int(meta.get("max_chunks", 1))
        self.labels: list[str] = json.loads((folder / "labels.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = self.tokenizer.token_to_id("[PAD]")
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=session_options,
                                            providers=providers or ["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> list[list[list[int]]]:
        """Token ids of each text's pieces, truncated to ``max_length`` (no padding): the part that needs no
        session. One piece per text unless the model reads long texts in pieces."""
        from selfsup.text.chunking import split_texts

        pieces, owner = split_texts(texts, self.chunk_words, self.max_chunks)
        per_text: list[list[list[int]]] = [[] for _ in texts]
        for i, encoding in zip(owner, self.tokenizer.encode_batch(pieces)):
            per_text[i].append(encoding.ids)
        return per_text

    def pool(self, piece_logits: np.ndarray, owner: list[int], n_texts: int) -> np.ndarray:
        """Each text's logits [n_texts, C] from its pieces' [n_pieces, C], in text order as ``flatten_pieces``
        gives them (``owner[p]``: the text of piece p): the logits themselves when every text is one piece, else
        the mean log-probabilities."""
        from selfsup.text.chunking import mean_log_probs

        if self.chunk_words == 0:
            return piece_logits
        return mean_log_probs(piece_logits, owner, n_texts)

    def logits_of_ids(self, ids_per_text: list[list[int]], session=None) -> np.ndarray:
        """[N, n_labels] float32 logits of already tokenized texts, in one call of ``session`` (default: the
        folder's session; another session of the same model.onnx may run it with other options), padded to the
        longest."""
        width = max(len(ids) for ids in ids_per_text)
        ids = np.full((len(ids_per_text), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids_per_text), width), dtype=np.int64)
        for row, token_ids in enumerate(ids_per_text):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        return (session or self.session).run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """[N, n_labels] float32 logits, in input order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            pieces, owner = flatten_pieces(self.encode(chunk))
            out[start : start + len(chunk)] = self.pool(self.logits_of_ids(pieces), owner, len(chunk))
        return out

    def predict(self, texts: list[str]) -> list[Prediction]:
        probs = softmax(self.logits(texts))
        return [Prediction(text, self.labels[int(p.argmax())], float(p.max()),
                           {label: float(v) for label, v in zip(self.labels, p)}) for text, p in zip(texts, probs)]
