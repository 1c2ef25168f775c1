"""The serve image without Docker: its requirements install into a clean venv (``serve_image``), torch is not there,
and the service starts from that venv with the image's own command and health check and answers."""

import subprocess
from pathlib import Path

import pytest

from conftest import free_port
from deploy.background import clean_env, get_json, post_json, start, stop, wait_until_up
from deploy.dockerfiles import exec_form

pytestmark = pytest.mark.slow  # a clean venv from PyPI (~1.5 min the first time, ~30 s from pip's cache)

TEXTS = ["my bag is lost", "can I change my flight", "thanks!"]

# imported by the service's command path; none of them may pull torch or the ML training stack
PROBE = r"""
import importlib.util, json, sys
import selfsup, selfsup.cli, selfsup.serve.build, selfsup.serve.app, selfsup.registry.lifecycle, selfsup.adapters.mlflow
print(json.dumps({
    "selfsup": selfsup.__file__,
    "installable": {name: importlib.util.find_spec(name) is not None
                    for name in ("torch", "torchvision", "transformers", "sklearn", "pandas")},
    "imported": sorted(m for m in ("torch", "torchvision", "transformers") if m in sys.modules),
}))
"""


def test_the_serve_image_has_the_service_and_no_torch(serve_image):
    import json

    result = subprocess.run([str(serve_image.python), "-c", PROBE], cwd=serve_image.app, capture_output=True,
                            text=True, env=clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert Path(found["selfsup"]).is_relative_to(serve_image.venv)  # the installed package, not this checkout
    assert found["installable"] == {"torch": False, "torchvision": False, "transformers": False, "sklearn": False,
                                    "pandas": True}  # pandas: MLflow's model metadata needs it for downloads
    assert found["imported"] == []


def test_the_service_starts_from_the_serve_image_and_answers(serve_image, tiny_onnx_classifier, tmp_path):
    from selfsup.serve.predict import OnnxClassifier

    expected = [p.label for p in OnnxClassifier(tiny_onnx_classifier).predict(TEXTS)]
    final = serve_image.final
    port = str(free_port())
    # the image's command, on 127.0.0.1 and a free port here, with a local export folder instead of the registry
    command = exec_form(final.last("CMD"))
    command[command.index("--host") + 1], command[command.index("--port") + 1] = "127.0.0.1", port
    command[0] = str(serve_image.bin / command[0])
    command += ["--model", f"intent={tiny_onnx_classifier}"]
    log = tmp_path / "serve.log"
    env = clean_env(PATH=f"{serve_image.bin}:/usr/bin:/bin")
    server = start(command, log, cwd=serve_image.app, env=env)
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/healthz", log, "selfsup serve (serve image)")
        # the image's HEALTHCHECK command, pointed at this port
        check = [part.replace(":8000/", f":{port}/") for part in exec_form(final.last("HEALTHCHECK"))]
        assert subprocess.run([str(serve_image.bin / check[0]), *check[1:]], env=env, timeout=30).returncode == 0
        assert get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200
        status, body = post_json(f"http://127.0.0.1:{port}/v1/intent", {"text": TEXTS})
        assert status == 200, body
        assert [row["label"] for row in body["results"]] == expected and body["version"] == "local"
        status, body = post_json(f"http://127.0.0.1:{port}/v1/intent", {"text": ""})
        assert status == 422, body
    finally:
        stop(server)
    assert "Traceback" not in log.read_text()
