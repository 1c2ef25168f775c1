"""The parity gate every ONNX export passes before anything may use it: onnxruntime against PyTorch."""

from __future__ import annotations


class ExportParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the configured tolerance."""


def check_parity(source, label_agreement: float, max_abs_diff: float, min_label_agreement: float,
                 allowed_abs_diff: float, diff_name: str = "diff") -> None:
    """Raise ``ExportParityError`` naming ``source`` when fewer predicted labels agree than ``min_label_agreement``
    or some output differs by more than ``allowed_abs_diff``."""
    if label_agreement < min_label_agreement or max_abs_diff > allowed_abs_diff:
        raise ExportParityError(
            f"ONNX parity check failed for {source}: label agreement {label_agreement:.4%} "
            f"(need >= {min_label_agreement:.4%}), max |{diff_name}| {max_abs_diff:.2e} "
            f"(allowed {allowed_abs_diff:.0e})")
