import json

import numpy as np
import pytest
import torch

from selfsup.vision.model import LinearProbe
from selfsup.vision.model import build_backbone, save_encoder
from selfsup.onnx_parity import ExportParityError
from selfsup.vision.export import export_image_model

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ssl")
    encoder = build_backbone("convnet", 1, 4).eval()
    for module in encoder.modules():  # non-trivial BatchNorm statistics, so eval-mode export matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    save_encoder(encoder, folder / "encoder.pt", "convnet", 4, 1, {"method": "simclr"})
    probe = LinearProbe(encoder.out_dim, len(CLASSES))
    probe.std.uniform_(0.5, 2.0)
    torch.save({"state_dict": probe.state_dict(), "dim": encoder.out_dim, "classes": CLASSES}, folder / "probe.pt")
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 28, 28), dtype=np.uint8)
    return folder, images


def test_onnx_export_matches_pytorch_with_dynamic_batch(trained, tmp_path):
    folder, images = trained
    out = tmp_path / "onnx"
    result = export_image_model(folder / "encoder.pt", folder / "probe.pt", images, out, 18, 1e-4, 1.0)
    assert result["label_agreement"] == 1.0 and result["max_abs_diff"] < 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "export.json", "model.onnx"]
    assert json.loads((out / "classes.json").read_text()) == CLASSES
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str), "the batch axis must be dynamic"
    for batch in (1, 7):
        embedding, logits = session.run(None, {"images": images[:batch]})
        assert embedding.shape == (batch, 16) and logits.shape == (batch, 3)


def test_failed_parity_writes_nothing(trained, tmp_path):
    folder, images = trained
    with pytest.raises(ExportParityError, match="max \\|diff\\|"):
        export_image_model(folder / "encoder.pt", folder / "probe.pt", images, tmp_path / "onnx", 18, 1e-15, 1.0)
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "onnx.tmp").exists()
