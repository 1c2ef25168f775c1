"""Image validation on broken fixtures: each broken image is named by manifest row, image and rule."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.config import load_config
from selfsup.vision.validate import validate_images
from selfsup.datasets.images import encode_png, zip_bytes

pytestmark = pytest.mark.slow  # imports Great Expectations


def _png(pixels: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _config(repo_root, folder):
    return load_config(repo_root / "params.yaml", [f"vision.data.manifest={folder / 'manifest.csv'}",
                                                   f"vision.validate.report_dir={folder / 'report'}",
                                                   "tracking.enabled=false"])


def _write(folder, train_members, test_members, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-000.zip").write_bytes(zip_bytes(train_members))
    (folder / "test-000.zip").write_bytes(zip_bytes(test_members))
    with (folder / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["split", "file", "member", "label"], *rows])


def _good(seed: int) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8))


def test_clean_images_pass(repo_root, tmp_path):
    _write(tmp_path, [("a.png", _good(1)), ("b.png", _good(2))], [("c.png", _good(3))],
           [["train", "train-000.zip", "a.png", "bag"], ["train", "train-000.zip", "b.png", "coat"],
            ["test", "test-000.zip", "c.png", "dress"]])
    outcome = validate_images(_config(repo_root, tmp_path))
    assert outcome.success, outcome.error_message(10)
    metrics = json.loads((tmp_path / "report/metrics.json").read_text())
    assert metrics["passed"] == 1 and metrics["rows"] == {"images/test": 1, "images/train": 2}
    assert (tmp_path / "report/report.html").stat().st_size > 1000


def test_broken_images_are_named_by_row_and_rule(repo_root, tmp_path):
    good = _good(7)
    truncated = good[: len(good) // 2]
    rgb = _png(np.zeros((28, 28, 3), np.uint8), "RGB")
    tiny = encode_png(np.zeros((4, 4), np.uint8))
    train = [("ok.png", good), ("trunc.png", truncated), ("rgb.png", rgb), ("empty.png", b""), ("tiny.png", tiny),
             ("label.png", _good(8))]
    _write(tmp_path, train, [("dup.png", good)], [
        ["train", "train-000.zip", "ok.png", "bag"],          # row 1: its pixels are also in test (row 8)
        ["train", "train-000.zip", "trunc.png", "bag"],       # row 2
        ["train", "train-000.zip", "rgb.png", "bag"],         # row 3
        ["train", "train-000.zip", "empty.png", "bag"],       # row 4
        ["train", "train-000.zip", "tiny.png", "bag"],        # row 5
        ["train", "train-000.zip", "label.png", "hat"],       # row 6
        ["train", "train-000.zip", "missing.png", "bag"],     # row 7
        ["test", "test-000.zip", "dup.png", "bag"],           # row 8
    ])
    outcome = validate_images(_config(repo_root, tmp_path))
    assert not outcome.success
    found = {(f.where, f.rule) for f in outcome.failures}
    assert found == {("row 1", "split_leakage"), ("row 8", "split_leakage"), ("row 2", "decodable"),
                     ("row 3", "mode_allowed"), ("row 4", "non_empty"), ("row 4", "decodable"),
                     ("row 5", "min_side"), ("row 6", "label_in_set"), ("row 7", "file_found"),
                     ("row 7", "decodable")}
    message = outcome.error_message(20)
    manifest = tmp_path / "manifest.csv"
    assert f"{manifest} row 2: rule 'decodable' broken — the file cannot be decoded as an image" in message
    assert f"{manifest} row 3: rule 'mode_allowed' broken" in message and "(value: 'RGB')" in message
    assert f"{manifest} row 4: rule 'non_empty' broken" in message and "(value: 0)" in message
    assert "'train-000.zip:trunc.png'" in message


def test_cli_exits_nonzero_and_names_the_rule(repo_root, tmp_path):
    from selfsup.cli import main

    _write(tmp_path, [("a.png", b"")], [("c.png", _good(3))],
           [["train", "train-000.zip", "a.png", "bag"], ["test", "test-000.zip", "c.png", "dress"]])
    overrides = [f"vision.data.manifest={tmp_path / 'manifest.csv'}", f"vision.validate.report_dir={tmp_path / 'r'}",
                 "tracking.enabled=false"]
    assert main(["--params", str(repo_root / "params.yaml"), "validate-images", *overrides]) == 1
