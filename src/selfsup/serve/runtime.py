"""The models the service runs, with onnxruntime (and tokenizers, Pillow) only — torch is never imported here.

``TextModel`` wraps an exported classifier folder (``selfsup.text.export``), ``ImageModel`` an exported image
encoder folder (``selfsup.vision.export``), ``EmbedderModel`` an exported sentence embedder with its indexes
(``selfsup.text.export_embedder``). Each splits its work in two: ``prepare`` (tokenize / decode an image),
done in the request outside any batch, and ``run`` (one onnxruntime call on a whole batch), done by the batcher.
``load_model`` tells the two apart by the folder's files and checks the model answers before it may be served.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.serve.predict import OnnxClassifier, flatten_pieces, softmax


class ModelLoadError(RuntimeError):
    """A model folder that cannot be served; the message names the folder and what is wrong."""


def session_options(intra_op_threads: int):
    """One session per model on a small machine: a fixed thread count, and threads that sleep instead of spinning
    when idle, so several sessions and the event loop do not steal each other's cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


# A session call this small (texts x longest, in tokens) runs faster on one thread than split over several: handing
# the work to a second thread costs more than it saves. Measured on an idle 2-core AMD EPYC (2026-12-02), INT8 intent
# model, one thread vs two: 1 text (30 tokens) 1.41x faster, 2 texts 1.13x, 3 equal, 4 or more slower; one 50-token
# topic text equal (benchmarks/RESULTS.md).
SINGLE_THREAD_MAX_TOKENS = 64


def runs_on_one_thread(texts: int, longest: int) -> bool:
    """Whether a session call of ``texts`` texts padded to ``longest`` tokens is small enough for one thread."""
    return texts * longest <= SINGLE_THREAD_MAX_TOKENS


def session_calls(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of the sequences with ``lengths``, sorted by length and grouped into session calls whose padded
    size (sequences x the longest) stays within ``max_batch_tokens`` (a longer sequence gets a call of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    calls, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * lengths[order[end]] <= max_batch_tokens:
            end += 1
        calls.append(order[start:end])
        start = end
    return calls


@dataclass
class Ranked:
    """One answer: labels ranked by probability (at most top_k of them)."""

    label: str
    confidence: float
    ranked: list[tuple[str, float]]


def rank_labels(probs: np.ndarray, labels: list[str], top_k: int) -> Ranked:
    """The ``top_k`` labels of ``probs`` [n_labels], most probable first."""
    order = np.argsort(-probs)[:top_k]
    ranked = [(labels[i], float(probs[i])) for i in order]
    return Ranked(ranked[0][0], ranked[0][1], ranked)


@dataclass(frozen=True)
class Tokenized:
    """A text and the token ids of its pieces (one piece unless the model reads long texts in pieces), with the
    model whose tokenizer produced them."""

    text: str
    ids: list[list[int]]
    by: "TextModel"


class TextModel:
    kind = "text"

    def __init__(self, folder: Path, intra_op_threads: int = 1, max_batch_tokens: int = 1024):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.classifier = OnnxClassifier(self.folder, session_options=session_options(intra_op_threads))
        self.labels = self.classifier.labels
        self.max_batch_tokens = max_batch_tokens
        # the same model on one thread, for calls of at most SINGLE_THREAD_MAX_TOKENS (a lone request at low load)
        self.one_thread_session = (ort.InferenceSession(str(self.folder / "model.onnx"),
                                                        sess_options=session_options(1),
                                                        providers=["CPUExecutionProvider"])
                                   if intra_op_threads > 1 else None)

    def session_for(self, texts: int, longest: int):
        """The onnxruntime session for a call of ``texts`` texts padded to ``longest`` tokens."""
        if self.one_thread_session is not None and runs_on_one_thread(texts, longest):
            return self.one_thread_session
        return self.classifier.session

    def prepare(self, texts: list[str]) -> list[Tokenized]:
        return [Tokenized(text, ids, self) for text, ids in zip(texts, self.classifier.encode(texts))]

    def run(self, items: list[Tokenized], on_call=None) -> list[np.ndarray]:
        """Probabilities [n_labels] per text. The texts' pieces (a long text read in pieces has several) are
        sorted by length and scored in as few session calls as keep each call's padded size (pieces x longest)
        within ``max_batch_tokens``: a padded position costs as much as a real one, and on a CPU one large ragged
        batch is slower per text than a few even ones (measured: benchmarks/serve_load.py). ``on_call(n)`` is told the size of every session call.

        A hot reload can swap the model between a request's tokenization and its batch; texts tokenized by another
        model (whose tokenizer may differ) are tokenized again here."""
        token_ids = [item.ids for item in items]
        stale = [k for k, item in enumerate(items) if item.by is not self]
        for k, ids in zip(stale, self.classifier.encode([items[k].text for k in stale]) if stale else []):
            token_ids[k] = ids
        pieces, owner = flatten_pieces(token_ids)
        piece_logits = np.empty((len(pieces), len(self.labels)), dtype=np.float32)
        for call in session_calls([len(ids) for ids in pieces], self.max_batch_tokens):
            ids = [pieces[i] for i in call]
            session = self.session_for(len(ids), max(map(len, ids)))
            piece_logits[call] = self.classifier.logits_of_ids(ids, session)
            if on_call is not None:
                on_call(len(call))
        return list(softmax(self.classifier.pool(piece_logits, owner, len(items))))

    def rank(self, probs: np.ndarray, top_k: int) -> Ranked:
        return rank_labels(probs, self.labels, top_k)

    def self_check(self) -> None:
        probs = self.run(self.prepare(["hello", "my bag did not arrive"]))
        if not all(np.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-3 for p in probs):
            raise ModelLoadError(f"{self.folder}: the model gives non-finite or unnormalised probabilities")


class ImageRejected(ValueError):
    """An upload that is not an image the model can take; the message says which rule it broke."""


class ImageModel:
    """``images uint8 [B, C, H, W] -> embedding [B, D], logits [B, classes]``; uploads are converted to the
    model's channel count and resized to its input size."""

    kind = "image"

    def __init__(self, folder: Path, intra_op_threads: int = 1):
        import onnxruntime as ort

        self.folder = Path(folder)
        for name in ("model.onnx", "classes.json"):
            if not (self.folder / name).exists():
                raise ModelLoadError(f"{self.folder / name} is missing: not an exported selfsup image model folder")
        self.labels: list[str] = json.loads((self.folder / "classes.json").read_text())
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), sess_options=session_options(
            intra_op_threads), providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape  # ['batch', C, H, W]
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise ModelLoadError(f"{self.folder}: expected an input [batch, C, H, W] with fixed C, H, W; got {shape}")
        self.channels, self.height, self.width = shape[1:]

    def prepare_image(self, data: bytes, max_pixels: int) -> np.ndarray:
        """PNG/JPEG bytes -> uint8 [C, H, W]. The size is checked from the header, before any pixel is decoded."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise ImageRejected(f"the upload is {image.format}, not PNG or JPEG")
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected(f"the image has {width}x{height} = {width * height:,} pixels; the limit is "
                                        f"{max_pixels:,} (serve.max_image_pixels)")
                image = image.convert("L" if self.channels == 1 else "RGB")
                image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except ImageRejected:
            raise
        except UnidentifiedImageError:
            raise ImageRejected("the upload is not a PNG or JPEG image (its bytes are no known image format)") from None
        except Image.DecompressionBombError as err:
            raise ImageRejected(f"the image is too large to decode safely ({err})") from None
        except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data inside a valid header
            raise ImageRejected(f"the image is damaged and cannot be decoded ({err})") from None
        return pixels[None] if self.channels == 1 else pixels.transpose(2, 0, 1)

    def rank(self, probs: np.ndarray, top_k: int) -> Ranked:
        return rank_labels(probs, self.labels, top_k)

    def run(self, images: list[np.ndarray], on_call=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(embedding [D], probabilities [classes]) per image, from one session call."""
        embedding, logits = self.session.run(["embedding", "logits"], {"images": np.stack(images)})
        if on_call is not None:
            on_call(len(images))
        return list(zip(embedding, softmax(logits)))

    def self_check(self) -> None:
        (embedding, probs), = self.run([np.zeros((self.channels, self.height, self.width), dtype=np.uint8)])
        if not (np.isfinite(embedding).all() and np.isfinite(probs).all()):
            raise ModelLoadError(f"{self.folder}: the model gives non-finite outputs")


@dataclass(frozen=True)
class Query:
    """A search: the text's chunks as token ids, which index to search and how many entries to return."""

    text: str
    chunks: list[list[int]]
    index: str
    k: int
    by: "EmbedderModel"


@dataclass
class Match:
    row: dict  # the index entry's metadata (knowledge-base entry or article)
    score: float  # cosine similarity to the query


class EmbedderModel:
    """An exported sentence embedder (``selfsup.text.export_embedder``) with its indexes: ``model.onnx``
    (``input_ids``, ``attention_mask`` [B, L] -> ``sentence_embedding`` [B, H], unit vectors), ``tokenizer.json``,
    ``embedder.json`` (max_length, chunking, the index names) and ``<index>.npy`` / ``<index>.jsonl`` per index.

    A text is embedded the way the retrieval stage embedded it (``selfsup.text.retrieval``: word chunks, each
    mean-pooled, their sum normalised), and searched by exact cosine over the index (``VectorIndex``)."""

    kind = "embedder"

    def __init__(self, folder: Path, intra_op_threads: int = 1, max_batch_tokens: int = 1024):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from selfsup.text.retrieval import VectorIndex

        self.folder = Path(folder)
        for name in ("model.onnx", "tokenizer.json", "embedder.json"):
            if not (self.folder / name).exists():
                raise ModelLoadError(f"{self.folder / name} is missing: not an exported selfsup embedder folder")
        meta = json.loads((self.folder / "embedder.json").read_text())
        self.max_length, self.chunk_words, self.max_chunks = (int(meta[k]) for k in ("max_length", "chunk_words",
                                                                                      "max_chunks"))
        self.indexes = {name: VectorIndex.read(self.folder, name) for name in meta["indexes"]}
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.pad_id = self.tokenizer.token_to_id("[PAD]")
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), sess_options=session_options(
            intra_op_threads), providers=["CPUExecutionProvider"])
        self.max_batch_tokens = max_batch_tokens
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        for name, index in self.indexes.items():
            if index.vectors.shape[1] != self.dim:
                raise ModelLoadError(f"{self.folder}: the {name} index has {index.vectors.shape[1]}-dimensional "
                                     f"vectors but the model embeds into {self.dim}")

    def _tokenize(self, text: str) -> list[list[int]]:
        from selfsup.text.chunking import word_chunks

        return [e.ids for e in self.tokenizer.encode_batch(word_chunks(text, self.chunk_words, self.max_chunks))]

    def prepare(self, texts: list[str], index: str, k: int) -> list[Query]:
        if index not in self.indexes:
            raise ValueError(f"no index {index!r}; this embedder has {sorted(self.indexes)}")
        return [Query(text, self._tokenize(text), index, k, self) for text in texts]

    def embed_chunks(self, chunks: list[list[int]], on_call=None) -> np.ndarray:
        """Unit embeddings [n_chunks, H] of tokenized chunks, in session calls of at most ``max_batch_tokens``."""
        out = np.zeros((len(chunks), self.dim), dtype=np.float32)
        for call in session_calls([len(ids) for ids in chunks], self.max_batch_tokens):
            width = max(len(chunks[i]) for i in call)
            ids = np.full((len(call), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(call), width), dtype=np.int64)
            for row, i in enumerate(call):
                ids[row, : len(chunks[i])] = chunks[i]
                mask[row, : len(chunks[i])] = 1
            out[call] = self.session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
            if on_call is not None:
                on_call(len(call))
        return out

    def embed(self, queries: list[Query], on_call=None) -> np.ndarray:
        """Unit embeddings [n_queries, H]; queries tokenized by another model (a hot reload) are tokenized again."""
        from selfsup.text.retrieval import pool_chunks

        chunks, owner = [], []
        for i, query in enumerate(queries):
            pieces = query.chunks if query.by is self else self._tokenize(query.text)
            chunks += pieces
            owner += [i] * len(pieces)
        return pool_chunks(self.embed_chunks(chunks, on_call), owner, len(queries))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed([Query(t, self._tokenize(t), "", 0, self) for t in texts])

    def run(self, queries: list[Query], on_call=None) -> list[list[Match]]:
        """Each query's ``k`` nearest entries of its index, best first: embedded and searched in one batch, so the
        answer always comes from one version's encoder and index together."""
        vectors = self.embed(queries, on_call)
        out: list = [None] * len(queries)
        for name in {q.index for q in queries}:
            members = [i for i, q in enumerate(queries) if q.index == name]
            index = self.indexes[name]
            indices, scores = index.search(vectors[members], max(queries[i].k for i in members))
            for i, row, row_scores in zip(members, indices, scores):
                out[i] = [Match(index.rows[j], float(score)) for j, score in
                          zip(row[: queries[i].k], row_scores[: queries[i].k])]
        return out

    def self_check(self) -> None:
        for name in self.indexes:
            (matches,) = self.run(self.prepare(["my bag did not arrive"], name, 1))
            if not matches or not np.isfinite(matches[0].score) or abs(matches[0].score) > 1 + 1e-3:
                raise ModelLoadError(f"{self.folder}: searching the {name} index gives {matches}")


def load_model(folder: Path, intra_op_threads: int = 1,
               max_batch_tokens: int = 1024) -> TextModel | ImageModel | EmbedderModel:
    """Load an exported text classifier, image encoder or sentence embedder folder and check that it answers."""
    folder = Path(folder)
    if not (folder / "model.onnx").exists():
        raise ModelLoadError(f"{folder}: no model.onnx — not an exported selfsup model folder")
    try:
        if (folder / "classes.json").exists():
            model = ImageModel(folder, intra_op_threads)
        elif (folder / "embedder.json").exists():
            model = EmbedderModel(folder, intra_op_threads, max_batch_tokens)
        else:
            model = TextModel(folder, intra_op_threads, max_batch_tokens)
        model.self_check()
    except ModelLoadError:
        raise
    except Exception as err:  # a corrupt or truncated file surfaces as many onnxruntime/tokenizers error types
        raise ModelLoadError(f"{folder}: cannot be loaded ({type(err).__name__}: {err})") from err
    return model
