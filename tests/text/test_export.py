import json
import subprocess
import sys

import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.onnx_parity import ExportParityError
from selfsup.text.export import Int8Gate, export_classifier
from selfsup.text.model import classifier_from_scratch
from selfsup.text.tokenizer import load_tokenizer

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["@united thanks for nothing, 3 hours on the tarmac", "the senate met today", "great crew!", "ok", "a " * 80]
GOLD = ["negative", "neutral", "positive", "neutral", "neutral"]


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
    import warnings

    out = tmp_path / "onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export_classifier(model_dir, LABELS, TEXTS, 64, out, opset=18, min_label_agreement=1.0,
                                   max_abs_logit_diff=1e-4)
    assert not [w for w in caught if "axis name" in str(w.message)], "the shared axes' warning reaches the log"
    assert result.label_agreement == 1.0 and result.max_abs_logit_diff < 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.onnx", "tokenizer.json"]
    assert json.loads((out / "labels.json").read_text()) == LABELS
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["input_ids"] == shapes["attention_mask"] == ["batch", "seq"], "dynamic axes, named as documented"


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


def _ops(path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.slow  # a real torch.onnx export, quantization and two graph rewrites: ~6 s
def test_int8_that_passes_its_check_is_served_as_model_onnx(model_dir, tmp_path):
    out = tmp_path / "onnx"
    result = export_classifier(model_dir, LABELS, TEXTS, 64, out, 18, 1.0, 1e-4, ort_fusion=True, test_labels=GOLD,
                               int8=Int8Gate("auto", min_label_agreement=1.0, max_abs_logit_diff=1.0,
                                             max_accuracy_drop=0.0))
    assert result.serve_precision == "int8"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.fp32.onnx", "model.onnx",
                                                     "tokenizer.json"]
    assert "MatMulInteger" in _ops(out / "model.onnx") and "MatMulInteger" not in _ops(out / "model.fp32.onnx")
    assert "Attention" in _ops(out / "model.fp32.onnx")  # the FP32 graph is the fused one, as without int8
    meta = json.loads((out / "export.json").read_text())
    fp32, int8 = meta["precisions"]["fp32"], meta["precisions"]["int8"]
    assert meta["serve_precision"] == "int8" and (fp32["file"], int8["file"]) == ("model.fp32.onnx", "model.onnx")
    assert int8["passed"] and int8["failures"] == [] and int8["quantized_matmuls"] >= 6  # 4 Q/K/V/out + 2 FFN + head
    assert int8["label_agreement"] == 1.0 and 0 < int8["max_abs_logit_diff"] <= 1.0
    assert int8["accuracy"] == fp32["accuracy"] == meta["pytorch_scores"]["accuracy"]
    assert 0 <= int8["macro_f1"] <= 1 and fp32["macro_f1"] == meta["pytorch_scores"]["macro_f1"]
    assert meta["onnx_bytes"] == (out / "model.onnx").stat().st_size < fp32["onnx_bytes"]
    # the FP32 parity gate's numbers stay those of the FP32 graph (the registry gate reads them)
    assert meta["label_agreement"] == 1.0 and meta["max_abs_logit_diff"] < 1e-4
    from selfsup.serve.predict import OnnxClassifier

    served = [p.label for p in OnnxClassifier(out).predict(TEXTS)]  # the INT8 graph, through the serving code
    assert served == [LABELS[i] for i in _pytorch_logits(model_dir).argmax(-1)]


def _pytorch_logits(model_dir):
    from selfsup.text.model import load_classifier, predict_logits

    return predict_logits(load_classifier(model_dir), load_tokenizer(model_dir), TEXTS, 64, torch.device("cpu"))


@pytest.mark.slow  # a real torch.onnx export and quantization: ~5 s
def test_int8_that_fails_its_check_falls_back_to_fp32(model_dir, tmp_path):
    """int8 rounding moves logits by far more than 1e-9, so that bound cannot hold: model.onnx must be FP32."""
    out = tmp_path / "onnx"
    result = export_classifier(model_dir, LABELS, TEXTS, 64, out, 18, 1.0, 1e-4, test_labels=GOLD,
                               int8=Int8Gate("auto", max_abs_logit_diff=1e-9))
    assert result.serve_precision == "fp32"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.int8.onnx", "model.onnx",
                                                     "tokenizer.json"]
    assert "MatMulInteger" not in _ops(out / "model.onnx") and "MatMulInteger" in _ops(out / "model.int8.onnx")
    meta = json.loads((out / "export.json").read_text())
    int8 = meta["precisions"]["int8"]
    assert meta["serve_precision"] == "fp32" and meta["precisions"]["fp32"]["file"] == "model.onnx"
    assert int8["file"] == "model.int8.onnx" and not int8["passed"] and int8["max_abs_logit_diff"] > 1e-9
    assert len(int8["failures"]) == 1 and "int8_max_abs_logit_diff" in int8["failures"][0]


@pytest.mark.slow  # a real torch.onnx export and quantization: ~5 s
def test_int8_required_but_failing_fails_the_export(model_dir, tmp_path):
    out = tmp_path / "onnx"
    with pytest.raises(ExportParityError, match="INT8 check failed .*int8_max_abs_logit_diff"):
        export_classifier(model_dir, LABELS, TEXTS, 64, out, 18, 1.0, 1e-4, test_labels=GOLD,
                          int8=Int8Gate("int8", max_abs_logit_diff=1e-9))
    assert not out.exists() and not (tmp_path / "onnx.tmp").exists()


def test_int8_needs_test_labels_and_a_known_precision(model_dir, tmp_path):
    with pytest.raises(ValueError, match="pass test_labels"):
        export_classifier(model_dir, LABELS, TEXTS, 64, tmp_path / "x", 18, 0.999, 1e-3, int8=Int8Gate())
    with pytest.raises(ValueError, match="not among the declared labels"):
        export_classifier(model_dir, LABELS, TEXTS, 64, tmp_path / "x", 18, 0.999, 1e-3,
                          test_labels=["negative", "neutral", "positive", "neutral", "angry"], int8=Int8Gate())
    with pytest.raises(ValueError, match="serve_precision must be one of"):
        Int8Gate("int4")
    assert not (tmp_path / "x").exists()


def test_int8_gate_comes_from_the_export_config(repo_root):
    from selfsup.config import ConfigError, load_config

    gate = Int8Gate.of(load_config(repo_root / "params.yaml", ["export.serve_precision=fp32",
                                                                "export.int8_max_accuracy_drop=0.01"]).export)
    assert (gate.serve_precision, gate.max_accuracy_drop) == ("fp32", 0.01)
    with pytest.raises(ConfigError, match="export.serve_precision: must be one of"):
        load_config(repo_root / "params.yaml", ["export.serve_precision=int4"])
    with pytest.raises(ConfigError, match="export.int8_min_label_agreement"):
        load_config(repo_root / "params.yaml", ["export.int8_min_label_agreement=1.5"])


@pytest.mark.slow  # a real torch.onnx export: 5-8 s
def test_a_model_that_reads_long_texts_in_pieces_is_served_the_same_way(model_dir, tmp_path):
    import numpy as np

    from selfsup.serve.predict import OnnxClassifier, softmax
    from selfsup.serve.runtime import TextModel
    from selfsup.text.model import load_classifier, predict_logits

    long_text = " ".join(["the senate met today and the crew was great"] * 7)  # 63 words: 4 pieces of 16
    texts = [*TEXTS, long_text]
    out = tmp_path / "onnx"
    result = export_classifier(model_dir, LABELS, texts, 64, out, 18, 1.0, 1e-4, chunk_words=16, max_chunks=4)
    meta = json.loads((out / "export.json").read_text())
    assert (meta["chunk_words"], meta["max_chunks"]) == (16, 4)
    assert result.label_agreement == 1.0 and result.max_abs_logit_diff < 1e-4
    reference = predict_logits(load_classifier(model_dir), load_tokenizer(model_dir), texts, 64, torch.device("cpu"),
                               chunk_words=16, max_chunks=4).numpy()
    classifier = OnnxClassifier(out)
    assert [len(pieces) for pieces in classifier.encode(texts)] == [1, 1, 1, 1, 4, 4]  # "a " * 80: 80 words, cut at 4 pieces
    np.testing.assert_allclose(classifier.logits(texts), reference, atol=1e-4)
    served = TextModel(out, max_batch_tokens=64)  # several session calls, pieces of one text in different calls
    calls = []
    np.testing.assert_allclose(np.stack(served.run(served.prepare(texts), on_call=calls.append)), softmax(reference),
                               atol=1e-4)
    assert sum(calls) == 12 and len(calls) > 1
