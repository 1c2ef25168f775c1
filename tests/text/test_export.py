import json
import subprocess
import sys

import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.onnx_parity import ExportParityError
from selfsup.text.export import export_classifier
from selfsup.text.model import classifier_from_scratch
from selfsup.text.tokenizer import load_tokenizer

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["@united thanks for nothing, 3 hours on the tarmac", "the senate met today", "great crew!", "ok", "a " * 80]


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer_dir, tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clf")
    model = classifier_from_scratch(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                                max_position=64), 400, 0, LABELS)
    model.save_pretrained(str(folder))
    load_tokenizer(tiny_tokenizer_dir).save_pretrained(str(folder))
    return folder


@pytest.mark.slow  # a real torch.onnx export (the first of the process also loads the exporter): 5-8 s
def test_onnx_export_matches_pytorch(model_dir, tmp_path):
    out = tmp_path / "onnx"
    result = export_classifier(model_dir, LABELS, TEXTS, 64, out, opset=18, min_label_agreement=1.0,
                               max_abs_logit_diff=1e-4)
    assert result.label_agreement == 1.0 and result.max_abs_logit_diff < 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.onnx", "tokenizer.json"]
    assert json.loads((out / "labels.json").read_text()) == LABELS
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert all(isinstance(dim, str) for dim in shapes["input_ids"]), "batch and sequence axes must be dynamic"


@pytest.mark.slow  # a real torch.onnx export and the graph rewrite: ~5 s
def test_ort_fusion_keeps_parity_and_fuses_attention(model_dir, tmp_path):
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    export_classifier(model_dir, LABELS, TEXTS, 64, plain, 18, 1.0, 1e-4)
    result = export_classifier(model_dir, LABELS, TEXTS, 64, fused, 18, 1.0, 1e-4, ort_fusion=True)
    assert result.label_agreement == 1.0 and result.max_abs_logit_diff < 1e-4
    fusions = json.loads((fused / "export.json").read_text())["ort_fusions"]
    assert fusions.get("attention", 0) >= 1 and fusions.get("skip_layer_normalization", 0) >= 1, fusions
    import onnx

    ops = {node.op_type for node in onnx.load(str(fused / "model.onnx")).graph.node}
    assert "Attention" in ops and "Attention" not in {n.op_type for n in onnx.load(str(plain / "model.onnx")).graph.node}


@pytest.mark.slow  # a real torch.onnx export: 4 s idle, 7 s on a busy machine (5 s when run first)
def test_failed_parity_writes_nothing(model_dir, tmp_path):
    out = tmp_path / "onnx"
    with pytest.raises(ExportParityError, match="max \\|Δlogit\\|"):
        export_classifier(model_dir, LABELS, TEXTS, 64, out, opset=18, min_label_agreement=1.0,
                          max_abs_logit_diff=1e-15)
    assert not out.exists() and not (tmp_path / "onnx.tmp").exists()


def test_wrong_labels_are_refused(model_dir, tmp_path):
    with pytest.raises(ValueError, match="differ from the declared labels"):
        export_classifier(model_dir, ["a", "b", "c"], TEXTS, 64, tmp_path / "x", 18, 0.999, 1e-3)


@pytest.mark.slow  # an export and two interpreters: 4 s idle, 6-7 s on a busy machine
def test_predict_cli_serves_without_torch(model_dir, tmp_path):
    out = tmp_path / "onnx"
    export_classifier(model_dir, LABELS, TEXTS, 64, out, 18, 0.999, 1e-3)
    code = (
        "import sys\n"
        "from selfsup.cli import main\n"
        f"rc = main(['predict', '--model', {str(out)!r}, '--json', 'my bag is lost', 'thanks!'])\n"
        "assert 'torch' not in sys.modules, 'the serving path imported torch'\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["my bag is lost", "thanks!"]
    assert all(r["label"] in LABELS and abs(sum(r["scores"].values()) - 1) < 1e-5 for r in rows)
    stdin = subprocess.run([sys.executable, "-m", "selfsup.cli", "predict", "--model", str(out)],
                           input="one\ntwo\n", capture_output=True, text=True)
    assert stdin.returncode == 0 and len(stdin.stdout.splitlines()) == 2
