"""Broken images (``tests/fixtures/bad/images/``, plus decompression bombs generated here): each, put in place of
one image of the fixture shards, makes the ``validate_images`` stage fail naming the manifest row, the image and
the rule, in bounded time and memory, writing nothing but its reports."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from selfsup.config import load_config

from conftest import run_cli

pytestmark = pytest.mark.slow  # runs the Great Expectations suites, like tests/vision/test_validate.py

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD = FIXTURES / "bad/images"
MEMBER, ROW = "train-00003.png", "row 4"  # the image replaced, and its manifest row


def overrides(root: Path) -> list[str]:
    return [f"vision.data.manifest={root / 'images/manifest.csv'}", f"vision.validate.report_dir={root / 'report'}",
            "tracking.enabled=false"]


def make_images(root: Path, member: str | None = None, content: bytes | None = None) -> Path:
    """The fixture images under ``root/images``, with ``member`` of train-000.zip replaced by ``content``."""
    shutil.copytree(FIXTURES / "data/images", root / "images")
    if member is not None:
        from selfsup.datasets.images import zip_bytes

        shard = root / "images/train-000.zip"
        with zipfile.ZipFile(shard) as zipped:
            members = [(name, content if name == member else zipped.read(name)) for name in zipped.namelist()]
        assert member in dict(members)
        shard.write_bytes(zip_bytes(members))
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and "report" not in p.relative_to(root).parts}


def validate(root: Path, repo_root: Path):
    from selfsup.vision.validate import validate_images

    return validate_images(load_config(repo_root / "params.yaml", overrides(root)))


# (fixture, rule, the value shown: the failing column's value)
IMAGE_FAULTS = [
    ("truncated.png", "decodable", f"train-000.zip:{MEMBER}"),
    ("zero_bytes.png", "non_empty", 0),
    ("not_an_image.png", "decodable", f"train-000.zip:{MEMBER}"),
    ("one_pixel.png", "min_side", 1),
    ("cmyk.jpg", "mode_allowed", "CMYK"),
    ("sixteen_bit.png", "mode_allowed", "I;16"),
    ("animated.gif", "single_frame", 2),
    ("animated.png", "single_frame", 2),  # mode L, 28 x 28: only its second frame is wrong
]


def test_bad_image_fixtures_are_all_used():
    assert {f[0] for f in IMAGE_FAULTS} == {p.name for p in BAD.iterdir()}


@pytest.mark.parametrize("fixture, rule, value", IMAGE_FAULTS, ids=[f[0] for f in IMAGE_FAULTS])
def test_bad_image_names_row_image_and_rule(tmp_path, repo_root, fixture, rule, value):
    root = make_images(tmp_path, MEMBER, (BAD / fixture).read_bytes())
    before = snapshot(root)
    start = time.perf_counter()
    outcome = validate(root, repo_root)
    assert time.perf_counter() - start < 60  # ~1-3 s here; generous for a loaded 2-core machine
    assert not outcome.success
    manifest = str(root / "images/manifest.csv")
    matching = [f for f in outcome.failures if (f.file, f.where, f.rule) == (manifest, ROW, rule)]
    assert matching, outcome.error_message(20)
    assert matching[0].value == value
    assert f"{manifest} {ROW}: rule '{rule}' broken" in outcome.error_message(20)
    assert {f.where for f in outcome.failures} == {ROW}, "only the replaced image fails"
    assert snapshot(root) == before
    assert json.loads((root / "report/metrics.json").read_text())["passed"] == 0


def png_bomb(side: int, rows: int | None = None) -> bytes:
    """A valid 8-bit grayscale PNG of ``side`` x ``side`` black pixels: a few hundred KB that decode to side² bytes.
    ``rows`` < side writes only that many rows of pixel data (a header that claims the full size)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(side)  # filter type 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(side if rows is None else rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit, colour type 0 (grayscale)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


PEAK_RSS = """
import json, resource, sys
from selfsup.config import load_config
from selfsup.vision.validate import validate_images
outcome = validate_images(load_config(sys.argv[1], sys.argv[2:]))
print(json.dumps({"messages": [f.message() for f in outcome.failures],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def validate_in_subprocess(root: Path, repo_root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(repo_root / "params.yaml"), *overrides(root)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bad_decompression_bombs_are_refused_without_decoding(tmp_path, repo_root):
    """A 12,000 x 12,000 PNG (160 KB; 144 MB decoded, under Pillow's own refusal limit) is named by max_side and
    never decoded; a 50,000 x 50,000 header (2.5 G pixels) is refused by Pillow at open: not decodable."""
    bomb = png_bomb(12_000)
    assert len(bomb) < 1_000_000
    clean = validate_in_subprocess(make_images(tmp_path / "clean"), repo_root)
    root = make_images(tmp_path / "bomb", MEMBER, bomb)
    start = time.perf_counter()
    result = validate_in_subprocess(root, repo_root)
    assert time.perf_counter() - start < 120
    manifest = root / "images/manifest.csv"
    assert result["messages"] == [f"{manifest} {ROW}: rule 'max_side' broken — the image is larger than "
                                  "vision.validate.max_side pixels (value: 12000)"]
    assert result["peak_rss_mb"] - clean["peak_rss_mb"] < 100, "the bomb must not be decoded (144 MB)"

    root = make_images(tmp_path / "header_bomb", MEMBER, png_bomb(50_000, rows=10))
    outcome = validate(root, repo_root)
    assert [(f.where, f.rule) for f in outcome.failures] == [(ROW, "decodable")]
    assert "decompression bomb" in outcome.failures[0].explain


def test_bad_image_cli_exits_nonzero_naming_row_and_rule(tmp_path, repo_root):
    root = make_images(tmp_path, MEMBER, (BAD / "cmyk.jpg").read_bytes())
    result = run_cli(["--params", str(repo_root / "params.yaml"), "validate-images", *overrides(root)], cwd=tmp_path)
    assert result.returncode == 1
    assert "image validation FAILED: 1 failing row(s)" in result.stderr
    assert f"{root / 'images/manifest.csv'} {ROW}: rule 'mode_allowed' broken" in result.stderr
