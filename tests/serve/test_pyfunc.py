"""Text models in the registry as an MLflow pyfunc: a real tiny exported classifier registered by the `register`
code path in a real SQLite MLflow store, then loaded by plain MLflow clients in other processes — the Python API
(on a path where selfsup is not importable, so only what the registry holds is used) and `mlflow models serve`."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import INTENT_LABELS, free_port
from deploy.background import stop
from selfsup.serve.inputs import TextRejected
from selfsup.serve.pyfunc import MODEL_ARTIFACT, TextClassifier, texts_of
from selfsup.serve.predict import OnnxClassifier

REPO = Path(__file__).resolve().parents[2]
NAME = "selfsup-intent"
TEXTS = ["my bag is lost", "thanks"]


# ------------------------------------------------------------------------------------------------ inputs, no MLflow


@pytest.mark.parametrize("model_input", [
    TEXTS, tuple(TEXTS), np.array(TEXTS), pd.Series(TEXTS), pd.DataFrame({"id": ["a", "b"], "text": TEXTS}),
    pd.DataFrame({"message": TEXTS}),
], ids=["list", "tuple", "array", "series", "text column", "single column"])
def test_texts_of_takes_lists_series_and_text_columns(model_input):
    assert texts_of(model_input) == TEXTS


@pytest.mark.parametrize("model_input, message", [
    ("my bag is lost", "the model input is one string; pass a list of strings"),
    ({"text": TEXTS}, "the model input is a dict; pass a list of strings, a pandas Series of strings, or a DataFrame"),
    (np.array([TEXTS]), r"the model input is an array of shape \(1, 2\)"),
    (pd.DataFrame({"id": ["a"], "body": ["b"]}), r"columns \['id', 'body'\]; it needs a 'text' column"),
    (["my bag is lost", " \t"], "text 2 is empty or only whitespace"),
    (["\u200b\u2060"], "text 1 has only invisible characters"),
    (["ok", None], "text 2 must be a string, got NoneType"),
])
def test_texts_of_refuses_anything_else_naming_the_rule(model_input, message):
    with pytest.raises(TextRejected, match=message):
        texts_of(model_input)


def test_the_pyfunc_answers_what_the_onnx_classifier_answers(tiny_onnx_classifier):
    model = TextClassifier()
    model.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(tiny_onnx_classifier)}))
    expected = [p.label for p in OnnxClassifier(tiny_onnx_classifier).predict(TEXTS)]
    assert model.labels_of(pd.DataFrame({"text": TEXTS})) == expected
    assert model.labels_of([]) == []


# ------------------------------------------------------------------------------------------------ a real registry


def register_tiny_text_model(root: Path, export_folder: Path) -> tuple:
    """``export_folder`` registered as ``selfsup-intent`` v1 by ``register_exports`` (as the register stage does) in
    a SQLite store under ``root``; returns (cfg, overrides, tracking URI). Call with MLFLOW_TRACKING_URI unset and
    the working folder in ``root`` (the run's git commit and data hash are then "unknown")."""
    from selfsup.config import load_config
    from selfsup.registry.lifecycle import register_exports
    from selfsup.tracking import open_run

    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = [f"tracking.tracking_uri={uri}", f"tracking.artifact_location={root / 'mlartifacts'}",
                 f"export.out_dir={root / 'onnx'}"]
    cfg = load_config(REPO / "params.yaml", overrides)
    shutil.copytree(export_folder, root / "onnx" / "intent")
    reports = {"evaluate": {"pretrained": {"accuracy": 0.91, "macro_f1": 0.9},
                            "scratch": {"accuracy": 0.8, "macro_f1": 0.78}},
               "export": {"label_agreement": 1.0, "max_abs_logit_diff": 2e-6}}
    for stage, report in reports.items():
        (root / "artifacts" / stage / "intent").mkdir(parents=True)
        (root / "artifacts" / stage / "intent" / "metrics.json").write_text(json.dumps(report))
    register = partial(register_exports, cfg, ["intent"], partial(open_run, cfg, "register", REPO / "params.yaml",
                                                                  None), "test-commit", artifacts=root / "artifacts")
    (first,) = register()
    assert (first.name, first.version, first.new) == (NAME, 1, True)
    (again,) = register()
    assert (again.version, again.new) == (1, False)  # the same ONNX file (SHA-256) is not registered twice
    return cfg, overrides, uri


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_onnx_classifier):
    from selfsup.adapters.mlflow import set_alias

    root = tmp_path_factory.mktemp("pyfunc")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        cfg, _, uri = register_tiny_text_model(root, tiny_onnx_classifier)
        set_alias(cfg.tracking, NAME, "champion", 1)
    expected = [p.label for p in OnnxClassifier(tiny_onnx_classifier).predict(TEXTS)]
    # the tiny model must tell these texts apart, or an answer in the wrong order would pass
    assert len(set(expected)) == len(TEXTS) and set(expected) <= set(INTENT_LABELS), expected
    return SimpleNamespace(root=root, cfg=cfg, uri=uri, expected=expected)


# the client: plain MLflow, with selfsup's own folder taken off the path first, as on a machine without selfsup
CLIENT = r"""
import json, sys
from pathlib import Path

src = Path(sys.argv[1]).resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != src]
import importlib.util
assert importlib.util.find_spec("selfsup") is None, "selfsup is still importable"

import mlflow
import pandas as pd

model = mlflow.pyfunc.load_model("models:/selfsup-intent@champion")
texts = ["my bag is lost", "thanks"]
answers = {"list": model.predict(texts), "series": model.predict(pd.Series(texts)),
           "frame": model.predict(pd.DataFrame({"id": ["a", "b"], "text": texts}))}
for name, bad in {"one string": "my bag is lost", "blank": ["my bag is lost", ""]}.items():
    try:
        model.predict(bad)
    except mlflow.exceptions.MlflowException as err:
        answers[name] = err.message
answers["selfsup"] = sys.modules["selfsup"].__file__
print(json.dumps(answers))
"""


@pytest.mark.slow  # a real registry (~15 s with its schema) and a second Python loading MLflow (~8 s)
def test_any_mlflow_client_gets_labels_from_the_champion(registry):
    from selfsup.registry.lifecycle import list_versions

    (row,) = list_versions(registry.cfg, "intent")
    assert row["tags"]["onnx_sha256"] and row["tags"]["metric.test_macro_f1"] == "0.9"  # the version tags stay
    result = subprocess.run([sys.executable, "-c", CLIENT, str(REPO / "src")], cwd=registry.root, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": registry.uri})
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["list"] == answers["series"] == answers["frame"] == registry.expected
    assert "the model input is one string" in answers["one string"]
    assert "text 2 is empty or only whitespace" in answers["blank"]
    # loaded from the code the registry holds with the model, not from this checkout
    assert not Path(answers["selfsup"]).resolve().is_relative_to(REPO / "src")



def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_until_up(server: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`mlflow models serve` exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"`mlflow models serve` did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow  # a real registry and an MLflow scoring server started from it (~20 s)
def test_mlflow_models_serve_answers_invocations_with_labels(registry):
    port, log = free_port(), registry.root / "serve.log"
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` runs the uvicorn of this environment
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        # a session of its own: the server runs uvicorn as a child, and the whole group is stopped below
        server = subprocess.Popen(command, cwd=registry.root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_until_up(server, f"http://127.0.0.1:{port}/ping", log)
        url = f"http://127.0.0.1:{port}/invocations"
        assert _post(url, {"inputs": TEXTS}) == (200, {"predictions": registry.expected})
        split = {"dataframe_split": {"columns": ["id", "text"], "data": [["a", TEXTS[0]], ["b", TEXTS[1]]]}}
        assert _post(url, split) == (200, {"predictions": registry.expected})
        status, body = _post(url, {"inputs": [TEXTS[0], "\u200b"]})
        assert status == 400 and "text 2 has only invisible characters" in body["message"]
    finally:
        stop(server)
