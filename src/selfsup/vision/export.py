"""ONNX export of the image encoder and its linear probe, checked against PyTorch before anything may use it.

``export_image_model`` writes, atomically, ``model.onnx`` (``images uint8 [B, C, H, W] -> embedding [B, D],
logits [B, classes]``), ``classes.json`` and ``export.json`` (opset, parity numbers). Nothing is written when
onnxruntime and PyTorch disagree beyond the tolerance (``selfsup.onnx_parity``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from selfsup.fileio import replace_dir, staging_dir
from selfsup.onnx_parity import check_parity
from selfsup.vision.model import LinearProbe, load_encoder


class EncoderWithProbe(torch.nn.Module):
    """``uint8 images [B, C, H, W] -> (embedding [B, D], logits [B, classes])``: the exported graph."""

    def __init__(self, encoder: torch.nn.Module, probe: torch.nn.Module):
        super().__init__()
        self.encoder, self.probe = encoder, probe

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(images)
        return embedding, self.probe(embedding)


def export_image_model(encoder_path: Path, probe_path: Path, images: np.ndarray, out_dir: Path, opset: int,
                       max_abs_diff: float, min_label_agreement: float) -> dict:
    """ONNX export (dynamic batch), ``onnx.checker``, onnxruntime vs PyTorch on ``images``; writes nothing when
    parity fails."""
    import onnx
    import onnxruntime as ort

    saved_probe = torch.load(probe_path, map_location="cpu", weights_only=True)
    probe = LinearProbe(saved_probe["dim"], len(saved_probe["classes"]))
    probe.load_state_dict(saved_probe["state_dict"])
    model = EncoderWithProbe(load_encoder(encoder_path), probe.eval()).eval()
    tmp = staging_dir(out_dir)
    try:
        example = torch.from_numpy(images[:2])
        torch.onnx.export(model, (example,), str(tmp / "model.onnx"), input_names=["images"],
                          output_names=["embedding", "logits"], dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          external_data=False, opset_version=opset, verbose=False)
        onnx.checker.check_model(onnx.load(str(tmp / "model.onnx")), full_check=True)
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref_embedding, ref_logits = model(torch.from_numpy(images))
        onnx_embedding, onnx_logits = session.run(None, {"images": images})
        diff = max(float(np.abs(ref_embedding.numpy() - onnx_embedding).max()),
                   float(np.abs(ref_logits.numpy() - onnx_logits).max()))
        agreement = float((ref_logits.numpy().argmax(1) == onnx_logits.argmax(1)).mean())
        result = {"onnx_path": str(out_dir / "model.onnx"), "parity_images": len(images), "max_abs_diff": diff,
                  "label_agreement": agreement, "onnx_bytes": (tmp / "model.onnx").stat().st_size,
                  "input": f"images uint8 [batch, {images.shape[1]}, {images.shape[2]}, {images.shape[3]}]",
                  "outputs": "embedding float32 [batch, D], logits float32 [batch, classes]"}
        check_parity(encoder_path, agreement, diff, min_label_agreement, max_abs_diff)
        (tmp / "classes.json").write_text(json.dumps(saved_probe["classes"]))
        (tmp / "export.json").write_text(json.dumps({"opset": opset, **result}, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    return result


