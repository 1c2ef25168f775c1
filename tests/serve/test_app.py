"""The inference service on real tiny exported models: real onnxruntime behind the real FastAPI app (its test
client runs the app's lifespan, so the batchers and the event loop are the ones uvicorn would run)."""

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import IMAGE_CLASSES, INTENT_LABELS
from selfsup.config import load_config
from selfsup.serve.build import build_app

REPO = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    return load_config(REPO / "params.yaml", ["serve.poll_seconds=0", *overrides])


@pytest.fixture(scope="module")
def folders(tiny_onnx_classifier, tiny_onnx_image_model):
    return {"intent": tiny_onnx_classifier, "sentiment": tiny_onnx_classifier, "image-encoder": tiny_onnx_image_model}


@pytest.fixture(scope="module")
def client(folders):
    cfg = _cfg("serve.max_chars=50", "serve.max_batch_items=4", "serve.max_body_bytes=2048",
               "serve.max_image_pixels=10000")
    with TestClient(build_app(cfg, folders), raise_server_exceptions=False) as test_client:
        yield test_client


def _png(size=(28, 28), mode="L") -> bytes:
    from PIL import Image

    # a smooth gradient: it compresses well, so large images stay under the test's small body limit
    row = np.linspace(0, 255, size[0], dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.tile(row, (size[1], 1))).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_endpoints_answer_with_ranked_labels_and_the_version(client):
    response = client.post("/v1/intent", json={"text": ["my bag is lost", "change my flight"], "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "local" and response.headers["X-Model-Version"] == f"{body['model']}/local"
    assert len(body["results"]) == 2
    for row in body["results"]:
        assert row["label"] in INTENT_LABELS and len(row["top_k"]) == 2
        assert row["top_k"][0]["probability"] >= row["top_k"][1]["probability"]
        assert row["needs_human"] == (row["confidence"] < 0.5)  # route.min_confidence in params.yaml
    one = client.post("/v1/sentiment", json={"text": "thanks!"}).json()
    assert len(one["results"]) == 1 and "needs_human" not in one["results"][0]  # only the routing task routes
    assert len(one["results"][0]["top_k"]) == 3  # serve.top_k


def test_image_endpoint_gives_class_and_embedding(client):
    response = client.post("/v1/image", content=_png(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in IMAGE_CLASSES and len(body["embedding"]) == 16
    rgb_big = client.post("/v1/image", content=_png((60, 40), "RGB"), headers={"Content-Type": "image/png"})
    assert rgb_big.status_code == 200, "colour images of another size are converted and resized"


def test_health_readiness_docs_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["models"]) == {"intent", "sentiment", "image-encoder"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/intent", "/v1/sentiment", "/v1/image"} <= set(paths)
    assert "text" in json.dumps(paths["/v1/intent"]["post"]["requestBody"])
    assert client.get("/docs").status_code == 200
    client.post("/v1/intent", json={"text": "hello"})
    metrics = client.get("/metrics").text
    assert 'selfsup_requests_total{endpoint="/v1/intent",method="POST",status="200"}' in metrics
    assert 'selfsup_model_info{model="intent",name="intent",version="local"} 1.0' in metrics
    assert "selfsup_request_seconds_bucket" in metrics and "selfsup_batch_size_bucket" in metrics


BAD_TEXT_REQUESTS = [
    # (body bytes, content type, status, words the message must contain)
    (b'{"text": ""}', "application/json", 422, "empty or only whitespace"),
    (b'{"text": "   \\t\\n"}', "application/json", 422, "empty or only whitespace"),
    ('{"text": "\u200b\u200d\ufeff"}'.encode(), "application/json", 422, "only invisible characters"),
    (b'{"text": ["ok", "\\u0000\\u0001"]}', "application/json", 422, "text[1] has only invisible"),
    (b'{"text": "ab\\ud800cd"}', "application/json", 422, "lone surrogate"),
    (b'{"text": 5}', "application/json", 422, "must be a string or a list of strings"),
    (b'{"text": ["ok", 5]}', "application/json", 422, "text[1] must be a string"),
    (b'{"text": []}', "application/json", 422, "the list is empty"),
    (b'{"txt": "hi"}', "application/json", 422, "text: Field required"),
    (b'{"text": "hi", "top_k": 0}', "application/json", 422, "top_k"),
    (json.dumps({"text": "x" * 51}).encode(), "application/json", 422, "the limit is 50 (serve.max_chars)"),
    (json.dumps({"text": ["a"] * 5}).encode(), "application/json", 422, "5 texts; the limit is 4"),
    (b'{"text": "hi"', "application/json", 400, "not valid JSON"),
    (b'{"text": "\xff\xfe"}', "application/json", 400, "not valid UTF-8"),
    (b'{"text": "hi"}', "text/plain", 415, "Content-Type: application/json"),
    (b'text=hi', "application/x-www-form-urlencoded", 415, "Content-Type: application/json"),
]


@pytest.mark.parametrize("body,ctype,status,words", BAD_TEXT_REQUESTS)
def test_bad_text_requests_get_a_clear_4xx(client, body, ctype, status, words):
    response = client.post("/v1/intent", content=body, headers={"Content-Type": ctype})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_bom_is_accepted(client):
    response = client.post("/v1/intent", content=b'\xef\xbb\xbf{"text": "hi"}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body,ctype,status,words", [
    (b"", "image/png", 422, "the body is empty"),
    (b"not an image at all", "image/png", 422, "not a PNG or JPEG"),
    (None, "image/png", 422, "the limit is 10,000 (serve.max_image_pixels)"),  # 200x200
    (b"GIF89a", "image/gif", 415, "image/png or image/jpeg"),
    (b'{"image": 1}', "application/json", 415, "image/png or image/jpeg"),
])
def test_bad_images_get_a_clear_4xx(client, body, ctype, status, words):
    body = _png((200, 200)) if body is None else body
    response = client.post("/v1/image", content=body, headers={"Content-Type": ctype})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_truncated_png_is_refused(client):
    response = client.post("/v1/image", content=_png()[:60], headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and "image" in response.json()["error"]


def test_bodies_over_the_limit_are_refused_with_or_without_a_length(client):
    big = json.dumps({"text": "a " * 2000}).encode()
    assert client.post("/v1/intent", content=big, headers={"Content-Type": "application/json"}).status_code == 413
    chunked = client.post("/v1/intent", content=iter([big[:1000], big[1000:]]),
                          headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and "serve.max_body_bytes" in chunked.json()["error"]


def test_unknown_endpoints_list_what_exists(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert "POST /v1/intent" in response.json()["endpoints"]
    assert client.get("/v1/intent").status_code == 405  # the endpoint exists, for POST


def test_concurrent_requests_are_scored_in_one_session_call(folders):
    cfg = _cfg("serve.max_wait_ms=1000", "serve.max_batch_size=12")
    with TestClient(build_app(cfg, {"intent": folders["intent"]})) as client:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda i: client.post("/v1/intent", json={"text": f"message {i}"}), range(12)))
        assert all(r.status_code == 200 for r in responses)
        metrics = client.get("/metrics").text
    # the batch starts when it is full (12 items), long before max_wait_ms: one call scored all twelve
    assert 'selfsup_batch_size_count{model="intent"} 1.0' in metrics
    assert 'selfsup_batch_size_sum{model="intent"} 12.0' in metrics


def test_routing_threshold_comes_from_route_min_confidence(folders):
    for threshold, expected in ((1.0, True), (0.0, False)):
        with TestClient(build_app(_cfg(f"route.min_confidence={threshold}"), {"intent": folders["intent"]})) as c:
            assert c.post("/v1/intent", json={"text": "hello"}).json()["results"][0]["needs_human"] is expected


def test_the_serving_path_never_imports_torch(folders, tiny_onnx_embedder):
    folders = {**folders, "embedder": tiny_onnx_embedder}
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from fastapi.testclient import TestClient\n"
        "from selfsup.config import load_config\n"
        "from selfsup.serve.build import build_app\n"
        f"cfg = load_config({str(REPO / 'params.yaml')!r}, ['serve.poll_seconds=0'])\n"
        f"folders = {{k: Path(v) for k, v in {json.dumps({k: str(v) for k, v in folders.items()})}.items()}}\n"
        "with TestClient(build_app(cfg, folders)) as c:\n"
        "    assert c.post('/v1/intent', json={'text': 'my bag'}).status_code == 200\n"
        "    assert c.post('/v1/image', content=open(sys.argv[1], 'rb').read(),\n"
        "                  headers={'Content-Type': 'image/png'}).status_code == 200\n"
        "    assert c.post('/v1/answer', json={'text': 'my bag'}).status_code == 200\n"
        "    assert c.post('/v1/similar', json={'text': 'the cup final'}).status_code == 200\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, f'the serving path imported {heavy}'\n"
    )
    png = Path(folders["image-encoder"]).parent / "probe.png"
    png.write_bytes(_png())
    result = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
