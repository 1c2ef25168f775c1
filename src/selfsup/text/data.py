"""Reading the versioned text data for training: corpus documents, packed MLM blocks, labelled sets."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch


def read_corpus(path: Path) -> list[tuple[str, str]]:
    """``(source, text)`` per document of the JSON-lines corpus."""
    with Path(path).open(encoding="utf-8") as handle:
        return [(doc["source"], doc["text"]) for doc in map(json.loads, handle)]


def read_labelled(path: Path) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a ``text,label`` CSV file."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def cap_stratified(texts: list[str], labels: list[str], limit: int, seed: int) -> tuple[list[str], list[str]]:
    """Exactly ``limit`` examples keeping each label's share (largest-remainder quotas, at least one per label;
    seeded, deterministic). ``limit=0`` or a limit above the size: everything."""
    if limit <= 0 or limit >= len(texts):
        return texts, labels
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    names = sorted(by_label)
    exact = {label: len(by_label[label]) * limit / len(texts) for label in names}
    quota = {label: max(1, int(exact[label])) for label in names}
    by_remainder = sorted(names, key=lambda label: (-(exact[label] - int(exact[label])), label))
    for label in by_remainder[: max(0, limit - sum(quota.values()))]:
        quota[label] += 1
    rng = random.Random(seed)
    keep: list[int] = []
    for label in names:
        members = list(by_label[label])
        rng.shuffle(members)
        keep += members[: quota[label]]
    keep.sort()
    return [texts[i] for i in keep], [labels[i] for i in keep]


@dataclass
class PackedCorpus:
    """The corpus as fixed-length token blocks, ``[CLS] t1 ... t_{L-2} [SEP]``.

    ``blocks``: LongTensor [n_blocks, seq_len]; ``sources``: the source index of each block; ``source_names``.
    Documents of one source are concatenated with ``[SEP]`` between them before cutting, so no padding is
    wasted (a padded 128-token batch of tweets is mostly padding).
    """

    blocks: torch.Tensor
    sources: torch.Tensor
    source_names: list[str]

    def __len__(self) -> int:
        return self.blocks.shape[0]


def pack_corpus(docs: list[tuple[str, str]], tokenizer, seq_len: int, batch_size: int = 1000) -> PackedCorpus:
    """Tokenize every document (without special tokens) and cut each source's token stream into blocks."""
    backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else tokenizer
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    by_source: dict[str, list[str]] = defaultdict(list)
    for source, text in docs:
        by_source[source].append(text)
    body = seq_len - 2
    blocks, sources, names = [], [], sorted(by_source)
    for index, source in enumerate(names):
        stream: list[int] = []
        texts = by_source[source]
        for start in range(0, len(texts), batch_size):
            for enc in backend.encode_batch(texts[start : start + batch_size], add_special_tokens=False):
                stream.extend(enc.ids)
                stream.append(sep_id)
        n = len(stream) // body
        if n == 0:
            continue
        body_ids = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
        blocks.append(torch.cat([torch.full((n, 1), cls_id), body_ids, torch.full((n, 1), sep_id)], dim=1))
        sources.append(torch.full((n,), index, dtype=torch.long))
    if not blocks:
        raise ValueError(f"the corpus yields no block of {seq_len} tokens")
    return PackedCorpus(torch.cat(blocks), torch.cat(sources), names)


def split_blocks(packed: PackedCorpus, validation_fraction: float, seed: int) -> tuple[PackedCorpus, PackedCorpus]:
    """A seeded random split of the blocks into train and validation."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(packed), generator=generator)
    n_val = max(1, int(len(packed) * validation_fraction))
    val, train = order[:n_val], order[n_val:]
    return (PackedCorpus(packed.blocks[train], packed.sources[train], packed.source_names),
            PackedCorpus(packed.blocks[val], packed.sources[val], packed.source_names))


def block_weights(packed: PackedCorpus, source_weights: dict[str, float]) -> torch.Tensor:
    """Sampling weight of every block: its source's weight (1.0 when not named). A source's share of training
    is then proportional to weight x size."""
    unknown = set(source_weights) - set(packed.source_names)
    if unknown:
        raise ValueError(f"pretrain.source_weights names sources not in the corpus: {sorted(unknown)}; "
                         f"sources: {packed.source_names}")
    per_source = torch.tensor([float(source_weights.get(name, 1.0)) for name in packed.source_names])
    return per_source[packed.sources]
