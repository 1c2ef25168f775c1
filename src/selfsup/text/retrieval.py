"""Answer retrieval and related articles: embed, index, search, and measure — three embedding methods side by side.

    knowledge base (id, intent, question, answer)  --embed--> index  <--search-- a customer message (intent label)
    topic train articles                           --embed--> index  <--search-- a topic test article (topic label)

Methods: ``tfidf`` (word 1-2-gram TF-IDF cosine, fitted on the indexed documents: the classical baseline),
``mlm_mean`` (the MLM encoder, masked mean pooling) and ``simcse`` (the SimCSE encoder, ``selfsup.text.simcse``).
Quality, with labels the methods never saw: for messages, whether the top-1 / any of the top-3 knowledge-base
entries has the message's intent (accuracy@1, recall@3) and the reciprocal rank of the first that does (MRR@10);
for articles, the share of the 5 nearest training articles with the same topic (precision@5).

``VectorIndex`` is exact cosine search over a NumPy matrix — right at a few thousand vectors (a query is one
matrix product). It is the only thing the service touches, so a vector database can replace it behind the same
three calls (``search``, ``save``, ``load``); at millions of vectors we would use FAISS (an IVF-PQ or HNSW index,
in process) or pgvector / Qdrant when the index must be shared and updated online.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.text.chunking import split_texts

KB_COLUMNS = ("id", "intent", "question", "answer")


class KnowledgeBaseError(ValueError):
    """The knowledge-base file breaks a rule; the message names the file, the row and the rule."""


def read_knowledge_base(path: Path, intents: list[str]) -> list[dict]:
    """The entries of ``path`` (CSV: id, intent, question, answer), every row checked."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != KB_COLUMNS:
                raise KnowledgeBaseError(f"{path}: the header must be {','.join(KB_COLUMNS)}, got "
                                         f"{','.join(reader.fieldnames or []) or 'nothing'}")
            rows = list(reader)
    except UnicodeDecodeError as err:
        raise KnowledgeBaseError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    seen = set()
    for line, row in enumerate(rows, start=2):
        if row["intent"] not in intents:
            raise KnowledgeBaseError(f"{path}, line {line}: intent {row['intent']!r} is not one of {intents}")
        if not row["question"].strip() or not row["answer"].strip():
            raise KnowledgeBaseError(f"{path}, line {line}: empty question or answer")
        if row["id"] in seen:
            raise KnowledgeBaseError(f"{path}, line {line}: the id {row['id']!r} is used twice")
        seen.add(row["id"])
    if not rows:
        raise KnowledgeBaseError(f"{path}: no entries")
    return rows


def kb_texts(entries: list[dict], kb_text: str) -> list[str]:
    return [e["question"] if kb_text == "question" else f"{e['question']} {e['answer']}" for e in entries]


# ------------------------------------------------------------------------------------------------ the index


class VectorIndex:
    """Exact cosine search: ``vectors`` [N, D] (L2-normalised rows, dense or scipy-sparse) and one metadata dict
    per row."""

    def __init__(self, vectors, rows: list[dict]):
        if vectors.shape[0] != len(rows):
            raise ValueError(f"{vectors.shape[0]} vectors but {len(rows)} metadata rows")
        self.vectors, self.rows = vectors, rows

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices [M, k], cosine scores [M, k]) of each query's ``k`` nearest rows, best first."""
        scores = queries @ self.vectors.T  # [M, N]
        scores = scores.toarray() if hasattr(scores, "toarray") else np.asarray(scores)
        k = min(k, len(self))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        indices = np.take_along_axis(top, order, 1)
        return indices, np.take_along_axis(scores, indices, 1)

    def write(self, folder: Path, name: str) -> None:
        """``<name>.npy`` (float32 [N, D]) and ``<name>.jsonl`` (one metadata row per line) in ``folder``."""
        np.save(Path(folder) / f"{name}.npy", np.asarray(self.vectors, dtype=np.float32))
        (Path(folder) / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows), encoding="utf-8")

    @classmethod
    def read(cls, folder: Path, name: str) -> "VectorIndex":
        folder = Path(folder)
        rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        return cls(np.load(folder / f"{name}.npy", allow_pickle=False), rows)

    def save(self, folder: Path, **info) -> None:
        """A folder of its own (vectors.npy, rows.jsonl, index.json with ``info``), swapped in whole."""
        from selfsup.fileio import replace_dir, staging_dir

        tmp = staging_dir(Path(folder))
        self.write(tmp, "vectors")
        (tmp / "vectors.jsonl").rename(tmp / "rows.jsonl")
        (tmp / "index.json").write_text(json.dumps({"count": len(self), "dim": int(self.vectors.shape[1]), **info},
                                                   indent=1))
        replace_dir(tmp, Path(folder))

    @classmethod
    def load(cls, folder: Path) -> "VectorIndex":
        folder = Path(folder)
        rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
        return cls(np.load(folder / "vectors.npy", allow_pickle=False), rows)


# ------------------------------------------------------------------------------------------------ methods


class TfidfEmbedder:
    """Word 1-2-gram TF-IDF (sublinear tf), fitted on the indexed documents; rows L2-normalised (sparse)."""

    name = "tfidf"

    def __init__(self, documents: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
        self.vectorizer.fit(documents)

    def embed(self, texts: list[str]):
        return self.vectorizer.transform(texts)


class EncoderEmbedder:
    """A saved BERT encoder (MLM or SimCSE checkpoint), masked mean pooling, L2-normalised [N, H].

    A text longer than ``chunk_words`` words (a news article) is cut into chunks of that many words, at most
    ``max_chunks`` of them; its embedding is the normalised mean of the chunks' embeddings, so the encoder sees the
    whole article rather than its first ``max_length`` tokens."""

    def __init__(self, name: str, folder: Path, max_length: int, chunk_words: int = 80, max_chunks: int = 8):
        from selfsup.text.simcse import load_encoder
        from selfsup.text.tokenizer import load_tokenizer

        self.name, self.max_length = name, max_length
        self.chunk_words, self.max_chunks = chunk_words, max_chunks
        self.encoder = load_encoder(folder).eval()
        self.tokenizer = load_tokenizer(folder)

    def embed(self, texts: list[str]) -> np.ndarray:
        from selfsup.text.simcse import embed_texts

        chunks, owner = split_texts(texts, self.chunk_words, self.max_chunks)
        return pool_chunks(embed_texts(self.encoder, self.tokenizer, chunks, self.max_length), owner, len(texts))


def pool_chunks(pieces: np.ndarray, owner: list[int], n_texts: int) -> np.ndarray:
    """Each text's embedding [n_texts, H]: the L2-normalised sum of its chunks' unit embeddings ``pieces``
    [n_chunks, H]; ``owner[c]`` is the text chunk c belongs to."""
    out = np.zeros((n_texts, pieces.shape[1]), dtype=np.float32)
    np.add.at(out, np.asarray(owner, dtype=np.int64), pieces)
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)


# ------------------------------------------------------------------------------------------------ metrics


def answer_metrics(labels: list[str], ranked: list[list[str]]) -> dict[str, float]:
    """accuracy@1, recall@3 and MRR@10 of ranked knowledge-base intents against each message's intent.
    ``ranked[i]`` lists the intents of message i's nearest entries, best first (at least 10 when there are)."""
    if len(labels) != len(ranked) or not labels:
        raise ValueError(f"{len(labels)} labels for {len(ranked)} rankings")
    hits = [[label == r for r in row] for label, row in zip(labels, ranked)]
    reciprocal = [next((1 / (rank + 1) for rank, hit in enumerate(row[:10]) if hit), 0.0) for row in hits]
    return {"accuracy_at_1": float(np.mean([row[0] for row in hits])),
            "recall_at_3": float(np.mean([any(row[:3]) for row in hits])),
            "mrr_at_10": float(np.mean(reciprocal))}


def precision_at(labels: list[str], ranked: list[list[str]], k: int = 5) -> float:
    """Mean share of each query's ``k`` nearest neighbours with the query's label."""
    if len(labels) != len(ranked) or not labels:
        raise ValueError(f"{len(labels)} labels for {len(ranked)} rankings")
    if any(len(row) < k for row in ranked):
        raise ValueError(f"every query needs {k} neighbours")
    return float(np.mean([sum(label == r for r in row[:k]) / k for label, row in zip(labels, ranked)]))


@dataclass
class RetrievalResult:
    method: str
    answer: dict[str, float]  # test messages vs the knowledge base
    answer_validation: dict[str, float]
    articles_precision_at_5: float
    kb_vectors: object = None  # [N_kb, D] the knowledge base as this method embedded it (dense or sparse)
    article_vectors: object = None  # [N_train_articles, D] the indexed articles


def evaluate_method(method: str, embedder_for, kb: list[dict], kb_docs: list[str], messages: dict,
                    articles: dict, top_k: int) -> RetrievalResult:
    """Score one method. ``embedder_for(documents)`` returns the embedder to use for an index of ``documents``
    (TF-IDF fits on them; an encoder ignores them). ``messages`` / ``articles``: split -> (texts, labels)."""
    embedder = embedder_for(kb_docs)
    kb_index = VectorIndex(embedder.embed(kb_docs), kb)
    answer = {}
    for split in ("test", "validation"):
        texts, labels = messages[split]
        indices, _ = kb_index.search(embedder.embed(texts), top_k)
        answer[split] = answer_metrics(labels, [[kb[j]["intent"] for j in row] for row in indices])
    train_texts, train_labels = articles["train"]
    article_embedder = embedder_for(train_texts)
    article_index = VectorIndex(article_embedder.embed(train_texts), [{"label": y} for y in train_labels])
    test_texts, test_labels = articles["test"]
    indices, _ = article_index.search(article_embedder.embed(test_texts), 5)
    precision = precision_at(test_labels, [[train_labels[j] for j in row] for row in indices], 5)
    return RetrievalResult(method, answer["test"], answer["validation"], precision, kb_index.vectors,
                           article_index.vectors)
