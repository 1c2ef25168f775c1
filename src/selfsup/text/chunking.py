"""Long texts read as pieces: a news article runs to several hundred words, the encoders read ``max_length`` (128)
tokens at a time. A text is cut into pieces of ``chunk_words`` words, at most ``max_chunks`` of them; the pieces
go through the model like short texts, and each text's answer is pooled from its pieces (``mean_log_probs`` for
classifiers, the normalised mean embedding for the sentence embedder, ``selfsup.text.retrieval.pool_chunks``).

NumPy only: the same functions cut and pool in training, evaluation, export parity and the service.
"""

from __future__ import annotations

import numpy as np


def word_chunks(text: str, chunk_words: int, max_chunks: int) -> list[str]:
    """``text`` cut into pieces of ``chunk_words`` words, at most ``max_chunks`` of them (a short text: itself,
    whitespace-normalised)."""
    if chunk_words < 1 or max_chunks < 1:
        raise ValueError(f"chunk_words and max_chunks must be >= 1, got {chunk_words} and {max_chunks}")
    words = text.split() or [text]
    return [" ".join(words[start : start + chunk_words])
            for start in range(0, min(len(words), chunk_words * max_chunks), chunk_words)]


def split_texts(texts: list[str], chunk_words: int, max_chunks: int) -> tuple[list[str], list[int]]:
    """All pieces of ``texts`` in order and, for each piece, the index of its text. ``chunk_words`` 0 leaves every
    text whole (one piece each)."""
    if chunk_words == 0:
        return list(texts), list(range(len(texts)))
    pieces, owner = [], []
    for i, text in enumerate(texts):
        cut = word_chunks(text, chunk_words, max_chunks)
        pieces += cut
        owner += [i] * len(cut)
    return pieces, owner


def mean_log_probs(logits: np.ndarray, owner: list[int], n_texts: int) -> np.ndarray:
    """Each text's mean log-probabilities [n_texts, C] over its pieces' ``logits`` [n_pieces, C]: the product of
    the pieces' distributions, so a piece that is sure of its topic outweighs several that are not. Softmax of
    the result is the normalised geometric mean; a text of one piece gets its own log-softmax (same argmax)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    owner_array = np.asarray(owner, dtype=np.int64)
    counts = np.bincount(owner_array, minlength=n_texts)
    if (counts == 0).any():
        raise ValueError(f"text {int(np.argmin(counts))} has no piece")
    out = np.zeros((n_texts, logits.shape[1]), dtype=np.float64)
    np.add.at(out, owner_array, log_probs)
    return (out / counts[:, None]).astype(np.float32)
