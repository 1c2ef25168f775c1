"""`selfsup registry fetch` writes a registered version as a plain model folder that `selfsup predict` loads, for
versions registered as a pyfunc and for those an older selfsup registered with the ONNX flavor; `selfsup predict`
refuses texts no model should answer, undecodable stdin and folders that are not exported models, in one line."""

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from selfsup.cli import main
from selfsup.serve.predict import OnnxClassifier

REPO = Path(__file__).resolve().parents[2]
NAME = "selfsup-intent"
TEXTS = ["my bag is lost", "thanks"]
EXPORTED = {"model.onnx", "tokenizer.json", "labels.json", "export.json"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_id(cfg) -> str:
    from selfsup.adapters.mlflow import standalone_run

    with standalone_run(cfg.tracking, cfg.tracking.experiment, "register", {}) as tracker:
        pass
    return tracker.run_id


def _register_the_old_way(cfg, folder: Path) -> None:
    """``folder`` registered as selfsup did before text models became a pyfunc: the ONNX flavor, with the other
    exported files as its ``extra_files`` (what older registries hold)."""
    import mlflow
    import onnx

    with mlflow.start_run(run_id=_run_id(cfg)):
        mlflow.onnx.log_model(onnx.load(str(folder / "model.onnx")), name="onnx_model", registered_model_name=NAME,
                              pip_requirements=["onnxruntime==1.32.0", "onnx==1.23.2"], save_as_external_data=False,
                              extra_files=[str(folder / n) for n in ("tokenizer.json", "labels.json", "export.json")])


def _register(cfg, folder: Path) -> int:
    """``folder`` registered as the register stage does now (``register_exports`` calls ``register_onnx``)."""
    from selfsup.adapters.mlflow import register_onnx

    version, new = register_onnx(cfg.tracking, _run_id(cfg), folder / "model.onnx", NAME, {}, {"task": "intent"},
                                 [folder / n for n in EXPORTED - {"model.onnx"}], _sha256(folder / "model.onnx"))
    assert new
    return version


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_onnx_classifier):
    """v1 registered the old way (alias ``legacy``), v2 the same export registered now (alias ``champion``), in a
    SQLite store; ``args`` are the CLI's ``--params`` and overrides that point at it."""
    from selfsup.adapters.mlflow import set_alias
    from selfsup.config import load_config

    root = tmp_path_factory.mktemp("fetch")
    overrides = [f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                 f"tracking.artifact_location={root / 'mlartifacts'}"]
    cfg = load_config(REPO / "params.yaml", overrides)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        _register_the_old_way(cfg, tiny_onnx_classifier)
        assert _register(cfg, tiny_onnx_classifier) == 2
        set_alias(cfg.tracking, NAME, "legacy", 1)
        set_alias(cfg.tracking, NAME, "champion", 2)
    expected = [p.label for p in OnnxClassifier(tiny_onnx_classifier).predict(TEXTS)]
    assert len(set(expected)) == len(TEXTS), expected  # else an answer in the wrong order would pass
    return SimpleNamespace(root=root, export=tiny_onnx_classifier, expected=expected,
                           params=["--params", str(REPO / "params.yaml")], overrides=overrides)


def _predicted_labels(folder: Path, capsys) -> list[str]:
    assert main(["predict", "--model", str(folder), *TEXTS]) == 0
    return [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]


@pytest.mark.slow  # a real registry (~15 s with its schema) and two versions logged
def test_registry_fetch_writes_a_folder_predict_loads_for_both_layouts(registry, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for alias, version in (("champion", 2), ("legacy", 1)):
        dest = registry.root / "served" / alias
        assert main([*registry.params, "registry", "fetch", "intent", "--alias", alias, str(dest),
                     *registry.overrides]) == 0
        printed = capsys.readouterr()
        assert printed.out.strip() == f"{NAME} v{version} (@{alias}) in {dest}"
        assert "Downloading artifacts" not in printed.err  # no progress bar where nobody watches (a log, a pipe)
        assert {p.name for p in dest.iterdir()} == EXPORTED | {"version.json"}
        assert json.loads((dest / "version.json").read_text()) == {"name": NAME, "version": version, "alias": alias}
        assert _sha256(dest / "model.onnx") == _sha256(registry.export / "model.onnx")
        assert _predicted_labels(dest, capsys) == registry.expected

    # another version into a folder that holds one: replaced whole, nothing of the old folder left
    dest = registry.root / "served" / "legacy"
    (dest / "stale.txt").write_text("from before")
    assert main([*registry.params, "registry", "fetch", "intent", str(dest), *registry.overrides]) == 0
    assert {p.name for p in dest.iterdir()} == EXPORTED | {"version.json"}
    assert json.loads((dest / "version.json").read_text())["version"] == 2
    assert sorted(p.name for p in dest.parent.iterdir()) == ["champion", "legacy"]  # no staging folder left


@pytest.mark.slow  # the registry fixture
def test_registry_fetch_of_a_missing_alias_or_task_fails_in_one_line(registry, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dest = registry.root / "served" / "nowhere"
    assert main([*registry.params, "registry", "fetch", "intent", "--alias", "canary", str(dest),
                 *registry.overrides]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "selfsup-intent has no version with the alias 'canary'" in err
    assert "`selfsup registry promote intent VERSION`" in err
    assert main([*registry.params, "registry", "fetch", "intents", str(dest), *registry.overrides]) == 2
    assert "unknown task 'intents'" in capsys.readouterr().err
    assert not dest.exists()


# ------------------------------------------------------------------------------------------------ predict


def _predict(args: list[str], monkeypatch, stdin: bytes = b"") -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    return main(["predict", *args])


@pytest.mark.parametrize("texts, stdin, where", [
    (["my bag is lost", "  \t"], b"", "text 2 is empty or only whitespace"),
    (["\u200b\u200d\ufeff"], b"", "text 1 has only invisible characters"),
    ([], "my bag is lost\n\n\u3164\u2800\nthanks\n".encode(), "stdin line 3 has only invisible characters"),
], ids=["whitespace argument", "invisible argument", "invisible stdin line"])
def test_predict_refuses_texts_no_model_should_answer(tiny_onnx_classifier, monkeypatch, capsys, texts, stdin, where):
    assert _predict(["--model", str(tiny_onnx_classifier), *texts], monkeypatch, stdin) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"refused: {where}") and err.strip().endswith("; nothing was classified")


def test_predict_refuses_stdin_that_is_not_utf8(tiny_onnx_classifier, monkeypatch, capsys):
    stdin = "my bag is lost\nthanks\n".encode() + b"caf\xe9 latte\n"  # Latin-1, not UTF-8
    assert _predict(["--model", str(tiny_onnx_classifier)], monkeypatch, stdin) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "refused: stdin line 3 is not valid UTF-8 (byte 0xe9); nothing was classified"


def test_predict_still_skips_blank_stdin_lines(tiny_onnx_classifier, monkeypatch, capsys):
    stdin = "\ufeffmy bag is lost\r\n\n   \r\nthanks\n".encode()  # a BOM, Windows line ends, blank lines
    assert _predict(["--model", str(tiny_onnx_classifier)], monkeypatch, stdin) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == TEXTS


def test_predict_refuses_a_folder_that_is_not_an_exported_model(tiny_onnx_classifier, tmp_path, monkeypatch, capsys):
    assert _predict(["--model", str(tmp_path), "my bag is lost"], monkeypatch) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'model.onnx'} is missing: not an exported selfsup model folder"
    damaged = shutil.copytree(tiny_onnx_classifier, tmp_path / "damaged")
    (damaged / "model.onnx").write_bytes(b"not a protobuf")
    assert _predict(["--model", str(damaged), "my bag is lost"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"{damaged} is not a loadable exported selfsup model folder (InvalidProtobuf: ")
