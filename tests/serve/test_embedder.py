"""The sentence embedder as the service serves it: the real export (parity with PyTorch, refusal on a mismatch),
search on a tiny index with known neighbours through onnxruntime alone, and /v1/answer and /v1/similar behind the
real FastAPI app with its batching, including bad input."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import TINY_ARTICLES, TINY_KB, export_tiny_embedder
from selfsup.config import load_config
from selfsup.serve.build import build_app
from selfsup.serve.runtime import EmbedderModel, load_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(tiny_onnx_embedder):
    cfg = load_config(REPO / "params.yaml", ["serve.poll_seconds=0", "serve.max_batch_items=4", "serve.max_chars=80"])
    with TestClient(build_app(cfg, {"embedder": tiny_onnx_embedder}), raise_server_exceptions=False) as test_client:
        yield test_client


def test_export_writes_the_folder_with_parity_numbers(tiny_onnx_embedder):
    meta = json.loads((tiny_onnx_embedder / "embedder.json").read_text())
    assert meta["indexes"] == ["answers", "articles"] and meta["chunk_words"] == 8
    parity = meta["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == {"answers": 1.0, "articles": 1.0}
    assert parity["fusions"], "the ORT fusions were applied (export.ort_fusion)"
    assert {p.name for p in tiny_onnx_embedder.iterdir()} == {
        "model.onnx", "tokenizer.json", "embedder.json", "answers.npy", "answers.jsonl", "articles.npy",
        "articles.jsonl"}


def test_a_failed_parity_check_writes_nothing(tiny_mlm_dir, tmp_path):
    from selfsup.text.export_embedder import ExportParityError

    out = tmp_path / "embedder"
    with pytest.raises(ExportParityError, match=r"max \|Δembedding\| .* > 1\.00e-12 \(retrieval.export.max_abs_diff\)"):
        export_tiny_embedder(tiny_mlm_dir, out, max_abs_diff=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedder.index"]  # no folder, no staging leftovers


def test_served_embeddings_match_the_index_and_find_known_neighbours(tiny_onnx_embedder):
    model = load_model(tiny_onnx_embedder)
    assert isinstance(model, EmbedderModel) and model.kind == "embedder"
    stored = model.indexes["answers"].vectors
    again = model.embed_texts([q for _, _, q, _ in TINY_KB])  # the KB questions, embedded by onnxruntime
    assert np.abs(again - stored).max() < 1e-4
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)
    for i, (entry_id, intent, question, _) in enumerate(TINY_KB):
        (matches,) = model.run(model.prepare([question], "answers", 3))
        assert matches[0].row["id"] == entry_id and matches[0].score == pytest.approx(1.0, abs=1e-4)
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    topic, text = TINY_ARTICLES[4]
    (matches,) = model.run(model.prepare([text], "articles", 2))
    assert matches[0].row == {"id": "a4", "topic": topic, "text": text} and len(matches) == 2


def test_a_long_text_is_the_mean_of_its_chunks(tiny_onnx_embedder):
    model = load_model(tiny_onnx_embedder)  # chunk_words 8, max_chunks 4
    words = [f"w{i}" for i in range(40)]  # 5 chunks of 8 words; only the first 4 are read
    (query,) = model.prepare([" ".join(words)], "articles", 1)
    assert len(query.chunks) == 4
    pieces = model.embed_texts([" ".join(words[s : s + 8]) for s in range(0, 32, 8)])
    expected = pieces.sum(0) / np.linalg.norm(pieces.sum(0))
    assert np.allclose(model.embed([query])[0], expected, atol=1e-5)


def test_answer_endpoint_returns_entries_with_intent_answer_and_score(client):
    response = client.post("/v1/answer", json={"text": [TINY_KB[2][2], "where is my bag"], "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("embedder", "local")
    first, second = body["results"]
    assert len(first["matches"]) == 2 and first["matches"][0]["id"] == TINY_KB[2][0]
    assert set(first["matches"][0]) == {"id", "intent", "question", "answer", "score"}
    assert first["matches"][0]["intent"] == "booking" and first["matches"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert len(second["matches"]) == 2
    default = client.post("/v1/answer", json={"text": "hello"}).json()
    assert len(default["results"][0]["matches"]) == 3  # serve.top_k


def test_similar_endpoint_returns_articles_with_topic(client):
    response = client.post("/v1/similar", json={"text": TINY_ARTICLES[0][1], "top_k": 10})
    assert response.status_code == 200, response.text
    matches = response.json()["results"][0]["matches"]
    assert len(matches) == len(TINY_ARTICLES)  # top_k beyond the index: the whole index, best first
    assert matches[0]["id"] == "a0" and matches[0]["topic"] == "sport"


def test_concurrent_answer_and_similar_requests_share_batches_and_keep_their_answers(client):
    texts = [q for _, _, q, _ in TINY_KB] + [t for _, t in TINY_ARTICLES]
    paths = ["/v1/answer"] * len(TINY_KB) + ["/v1/similar"] * len(TINY_ARTICLES)
    alone = [client.post(p, json={"text": t, "top_k": 1}).json()["results"][0] for p, t in zip(paths, texts)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda pt: client.post(pt[0], json={"text": pt[1], "top_k": 1}).json()["results"][0],
                                 list(zip(paths, texts)) * 3))
    assert together == alone * 3
    metrics = client.get("/metrics").text
    assert 'selfsup_requests_total{endpoint="/v1/similar",method="POST",status="200"}' in metrics
    assert 'selfsup_batch_size_count{model="embedder"}' in metrics


@pytest.mark.parametrize("body, status, words", [
    ({"text": ""}, 422, "text is empty"),
    ({"text": ["ok", " \u200b "]}, 422, "text[1]"),
    ({"text": 5}, 422, "must be a string or a list of strings"),
    ({"text": ["a", "b", "c", "d", "e"]}, 422, "the limit is 4"),
    ({"text": "x" * 81}, 422, "serve.max_chars"),
    ({"text": "hi", "top_k": 0}, 422, "top_k"),
    ({"text": "hi", "top_k": 101}, 422, "top_k"),
    ({"text": "hi", "index": "answers"}, 422, "index"),
])
def test_bad_search_requests_get_a_clear_4xx(client, body, status, words):
    for path in ("/v1/answer", "/v1/similar"):
        response = client.post(path, json=body)
        assert response.status_code == status and words in response.json()["error"], response.text


def test_bad_search_bodies_get_a_clear_4xx(client):
    not_json = client.post("/v1/answer", content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    wrong_type = client.post("/v1/similar", content=b"hello", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    assert client.get("/v1/answer").status_code == 405
    assert "POST /v1/similar" in client.get("/v1/nothing").json()["endpoints"]
