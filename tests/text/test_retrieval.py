"""Index search on vectors with known neighbours, the retrieval metrics against hand computations, and the
knowledge base's checks."""

import numpy as np
import pytest

from selfsup.text.retrieval import (KnowledgeBaseError, TfidfEmbedder, VectorIndex, answer_metrics, precision_at,
                                    read_knowledge_base)

INTENTS = ["baggage", "booking_refund", "flight_disruption"]


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_search_returns_the_known_neighbours_best_first():
    vectors = _unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]])
    index = VectorIndex(vectors, [{"i": i} for i in range(5)])
    indices, scores = index.search(_unit([[1, 0.05, 0], [0, 0, 1]]), 3)
    assert indices[0].tolist() == [0, 1, 4] and indices[1][0] == 3
    assert np.all(np.diff(scores, axis=1) <= 0) and scores[1][0] == pytest.approx(1.0)


def test_k_larger_than_the_index_returns_everything():
    index = VectorIndex(_unit([[1, 0], [0, 1]]), [{}, {}])
    indices, _ = index.search(_unit([[1, 0.1]]), 10)
    assert indices.tolist() == [[0, 1]]


def test_save_and_load_round_trip(tmp_path):
    index = VectorIndex(_unit([[1, 2], [3, 4]]), [{"id": "kb-1", "text": "é"}, {"id": "kb-2", "text": "x"}])
    index.save(tmp_path / "idx", method="test")
    again = VectorIndex.load(tmp_path / "idx")
    assert again.rows == index.rows and np.allclose(again.vectors, index.vectors)


def test_tfidf_finds_the_entry_sharing_the_words():
    docs = ["where is my lost bag", "refund for my ticket", "flight delayed three hours"]
    tfidf = TfidfEmbedder(docs)
    indices, _ = VectorIndex(tfidf.embed(docs), [{}] * 3).search(tfidf.embed(["my bag is lost"]), 1)
    assert indices.tolist() == [[0]]


def test_answer_metrics_by_hand():
    labels = ["a", "b", "c"]
    ranked = [["a", "x", "x"] + ["x"] * 7,      # hit at rank 1: acc 1, recall@3 1, rr 1
              ["x", "x", "b"] + ["x"] * 7,      # hit at rank 3: acc 0, recall@3 1, rr 1/3
              ["x"] * 5 + ["c"] + ["x"] * 4]    # hit at rank 6: acc 0, recall@3 0, rr 1/6
    m = answer_metrics(labels, ranked)
    assert m["accuracy_at_1"] == pytest.approx(1 / 3)
    assert m["recall_at_3"] == pytest.approx(2 / 3)
    assert m["mrr_at_10"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 3)
    assert answer_metrics(["a"], [["x"] * 10 + ["a"]])["mrr_at_10"] == 0.0  # beyond rank 10 counts nothing


def test_precision_at_5_by_hand():
    assert precision_at(["s", "t"], [["s", "s", "x", "s", "x"], ["x"] * 5], 5) == pytest.approx((3 / 5 + 0) / 2)
    with pytest.raises(ValueError, match="neighbours"):
        precision_at(["s"], [["s"]], 5)


def _kb(tmp_path, text):
    path = tmp_path / "kb.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_committed_knowledge_base_covers_every_intent(repo_root):
    import yaml

    intents = yaml.safe_load((repo_root / "params.yaml").read_text())["data"]["tasks"]["intent"]["labels"]
    entries = read_knowledge_base(repo_root / "annotations/kb/airline_help.csv", intents)
    counts = {i: sum(e["intent"] == i for e in entries) for i in intents}
    assert len(entries) >= 60 and min(counts.values()) >= 5, counts


@pytest.mark.parametrize("text,words", [
    ("id,intent,question\nkb-1,baggage,q\n", "the header must be"),
    ("id,intent,question,answer\nkb-1,luggage,q,a\n", "line 2: intent 'luggage'"),
    ("id,intent,question,answer\nkb-1,baggage, ,a\n", "line 2: empty question"),
    ("id,intent,question,answer\nkb-1,baggage,q,a\nkb-1,baggage,q2,a\n", "line 3: the id 'kb-1' is used twice"),
    ("id,intent,question,answer\n", "no entries"),
])
def test_a_broken_knowledge_base_names_file_line_and_rule(tmp_path, text, words):
    with pytest.raises(KnowledgeBaseError, match=words):
        read_knowledge_base(_kb(tmp_path, text), INTENTS)


@pytest.mark.slow  # two tiny encoders trained, evaluated and exported on the committed fixture data: ~40 s
def test_simcse_retrieval_and_export_stages_end_to_end(tiny_mlm_dir, fixture_data, repo_root, tmp_path, monkeypatch,
                                                       capsys):
    """The three stages as `dvc repro` runs them, on the committed data slice: SimCSE from a tiny MLM checkpoint,
    all three methods scored and the SimCSE indexes saved, the embedder exported with them; then `selfsup search`
    on the export."""
    import json

    from selfsup.config import load_config
    from selfsup.text.stages import retrieval_stage, simcse_stage

    monkeypatch.chdir(tmp_path)
    cfg = load_config(repo_root / "params.yaml", [
        "preset=tiny", "tracking.enabled=false", f"data.corpus={fixture_data / 'corpus/unlabeled.jsonl'}",
        *(f"data.tasks.{t}.dir={fixture_data / t}" for t in ("intent", "sentiment", "topic")),
        f"pretrain.out_dir={tiny_mlm_dir}", f"retrieval.knowledge_base={repo_root / 'annotations/kb/airline_help.csv'}",
        "retrieval.simcse.loop.progress=false", "retrieval.simcse.loop.threads=1", "retrieval.simcse.max_texts=64"])
    trained = simcse_stage(cfg, repo_root / "params.yaml")
    assert trained["steps"] == 4 and (tmp_path / "models/simcse/config.json").exists()
    metrics = retrieval_stage(cfg, repo_root / "params.yaml")
    assert json.loads((tmp_path / "artifacts/retrieval/metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for method in ("tfidf", "mlm_mean", "simcse"):
        answer = metrics[method]["answer"]
        assert 0 <= answer["accuracy_at_1"] <= answer["recall_at_3"] <= 1
        assert 0 <= metrics[method]["articles_precision_at_5"] <= 1
    kb = VectorIndex.load(tmp_path / "models/index/knowledge_base")
    assert len(kb) == metrics["queries"]["knowledge_base"] and {"id", "intent", "answer"} <= set(kb.rows[0])
    assert len(VectorIndex.load(tmp_path / "models/index/articles")) == metrics["queries"]["articles_indexed"]

    from selfsup.cli import main
    from selfsup.text.stages import export_embedder_stage

    exported = export_embedder_stage(cfg, repo_root / "params.yaml")
    assert exported["top1_agreement"]["answers"] >= 0.98 and exported["max_abs_diff"] < 1e-3
    assert json.loads((tmp_path / "artifacts/export_embedder/metrics.json").read_text()) == exported
    assert (tmp_path / "models/onnx/embedder/answers.jsonl").read_text().count("\n") == len(kb)

    overrides = [f"retrieval.export.out_dir={tmp_path / 'models/onnx/embedder'}", "preset=tiny"]
    assert main(["--params", str(repo_root / "params.yaml"), "search", kb.rows[3]["question"], *overrides, "-k", "2",
                 "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 2 and hits[0]["id"] == kb.rows[3]["id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["score"] >= hits[1]["score"]
    assert main(["--params", str(repo_root / "params.yaml"), "search", "the cup final", *overrides, "--what",
                 "articles"]) == 0
    assert main(["--params", str(repo_root / "params.yaml"), "search", " \u200b ", *overrides]) == 2
    missing = ["retrieval.export.out_dir=" + str(tmp_path / "nothing"), "preset=tiny"]
    assert main(["--params", str(repo_root / "params.yaml"), "search", "hello", *missing]) == 2
    assert "dvc repro export_embedder" in capsys.readouterr().err
