"""WordPiece tokenizer trained from scratch, deterministically, saved in the Hugging Face format.

The vocabulary is learnt here rather than with ``tokenizers.trainers.WordPieceTrainer``: that trainer breaks ties
between equally frequent merges by internal ids that follow Rust hash-map order, which is seeded at random per process,
so two trainings on the same corpus give different vocabularies (huggingface/tokenizers#1794; ``RAYON_NUM_THREADS=1``
does not help). ``learn_wordpiece_vocab`` runs the same algorithm (BPE merges over word counts with a ``##``
continuation prefix, stopping at ``vocab_size`` or below ``min_frequency``) and breaks ties by the pieces' text, so
the vocabulary depends on the corpus alone. Normalisation, pre-tokenisation and encoding stay the library's.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"


def _merge(word: list[int], a: int, b: int, new: int) -> list[int]:
    """``word`` with every non-overlapping ``a b`` (left to right) replaced by ``new``."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_wordpiece_vocab(word_counts: dict[str, int], vocab_size: int, min_frequency: int = 2,
                          special_tokens: Iterable[str] = SPECIAL_TOKENS) -> dict[str, int]:
    """A WordPiece vocabulary (piece -> id) from word counts, independent of dict order and of the process.

    Ids: the special tokens, then the alphabet (every character, and ``##c`` for characters seen inside a word),
    sorted, then the merged pieces in the order they were learnt. Each step merges the most frequent adjacent pair
    (ties: the smaller pair of piece strings); merging ``a`` and ``##b`` gives ``ab``.
    """
    pieces: list[str] = list(special_tokens)
    alphabet = set()
    for word in word_counts:
        alphabet.update(word[:1])
        alphabet.update(PREFIX + c for c in word[1:])
    pieces += sorted(alphabet - set(pieces))
    index = {piece: i for i, piece in enumerate(pieces)}

    words = sorted(word_counts)
    counts = [word_counts[w] for w in words]
    split = [[index[w[0]]] + [index[PREFIX + c] for c in w[1:]] for w in words]
    pair_count: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # may hold stale word indices: harmless
    for w, (symbols, n) in enumerate(zip(split, counts)):
        for pair in zip(symbols, symbols[1:]):
            pair_count[pair] += n
            where[pair].add(w)
    # max-heap on (count, then the smaller pair of strings); stale entries are re-checked when popped
    heap = [(-n, pieces[a], pieces[b], a, b) for (a, b), n in pair_count.items()]
    heapq.heapify(heap)
    while len(pieces) < vocab_size and heap:
        neg, text_a, text_b, a, b = heapq.heappop(heap)
        current = pair_count.get((a, b), 0)
        if current != -neg:
            if current > 0:
                heapq.heappush(heap, (-current, text_a, text_b, a, b))
            continue
        if current < min_frequency:
            break
        merged = text_a + text_b.removeprefix(PREFIX)
        if merged not in index:
            index[merged] = len(pieces)
            pieces.append(merged)
        new = index[merged]
        changed = set()
        for w in where.pop((a, b)):
            old, n = split[w], counts[w]
            updated = _merge(old, a, b, new)
            if len(updated) == len(old):
                continue
            for pair in zip(old, old[1:]):
                pair_count[pair] -= n
                changed.add(pair)
            for pair in zip(updated, updated[1:]):
                pair_count[pair] += n
                where[pair].add(w)
                changed.add(pair)
            split[w] = updated
        pair_count.pop((a, b), None)
        changed.discard((a, b))
        for pair in changed:
            n = pair_count[pair]
            if n > 0:
                heapq.heappush(heap, (-n, pieces[pair[0]], pieces[pair[1]], *pair))
            else:
                pair_count.pop(pair)
    return {piece: i for i, piece in enumerate(pieces)}


def train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = True):
    """Train a BERT-style WordPiece tokenizer; returns a ``tokenizers.Tokenizer`` that adds [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = learn_wordpiece_vocab(word_counts, vocab_size, min_frequency)

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=PREFIX))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix=PREFIX)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


def save_hf_tokenizer(tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Write ``tokenizer.json`` plus the files ``PreTrainedTokenizerFast.from_pretrained(out_dir)`` loads."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
    )
    fast.save_pretrained(str(out_dir))


def load_tokenizer(folder: Path):
    """The saved tokenizer as a ``PreTrainedTokenizerFast`` (offline, from the folder only)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
