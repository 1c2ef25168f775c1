import csv
import zipfile
from collections import Counter

import numpy as np
import pytest

from selfsup.datasets.images import FASHION_MNIST_CLASSES, encode_png, image_files, zip_bytes
from selfsup.vision.data import ImageDataError, decode_image, load_images, load_labels, read_manifest


@pytest.mark.slow  # the full build
def test_built_images_are_fashion_mnist_with_held_out_test(built_data):
    rows = read_manifest(built_data / "images/manifest.csv")
    by_split = Counter(r.split for r in rows)
    assert by_split == {"train": 60_000, "test": 10_000}
    test_labels = Counter(r.label for r in rows if r.split == "test")
    assert test_labels == {name: 1_000 for name in FASHION_MNIST_CLASSES}
    shards = sorted(p.name for p in (built_data / "images").glob("*.zip"))
    assert shards == ["test-000.zip"] + [f"train-{i:03d}.zip" for i in range(6)]
    with zipfile.ZipFile(built_data / "images/train-000.zip") as archive:
        info = archive.infolist()[0]
        assert info.compress_type == zipfile.ZIP_STORED and info.date_time == (1980, 1, 1, 0, 0, 0)
        pixels, mode = decode_image(archive.read(info.filename))
    assert mode == "L" and pixels.shape == (28, 28) and pixels.dtype == np.uint8 and pixels.max() > 100


def test_load_images_gives_pixels_only_and_labels_align(fixture_data):
    manifest = fixture_data / "images/manifest.csv"
    images = load_images(manifest, "test", limit=12)
    assert images.shape == (12, 1, 28, 28) and images.dtype == np.uint8 and images.max() > 100
    labels = load_labels(manifest, "test", list(FASHION_MNIST_CLASSES), limit=12)
    assert labels.shape == (12,) and labels.max() < 10
    # the first Fashion-MNIST test image is an ankle boot (label 9) in every copy of the data set
    assert labels[0] == 9
    # images and labels follow the manifest's rows of that split, in order
    rows = [r for r in read_manifest(manifest) if r.split == "test"]
    assert [FASHION_MNIST_CLASSES[i] for i in load_labels(manifest, "test", list(FASHION_MNIST_CLASSES))] == [
        r.label for r in rows]
    everything = load_images(manifest, "test")
    assert len(everything) == len(rows) == 20 and np.array_equal(everything[:12], images)
    with zipfile.ZipFile(manifest.parent / rows[5].file) as archive:
        pixels, _ = decode_image(archive.read(rows[5].member))
    assert np.array_equal(everything[5, 0], pixels)
    assert sorted(Counter(r.label for r in rows).values()) == [2] * 10
    with pytest.raises(ImageDataError, match="no rows with split 'validation'"):
        load_images(manifest, "validation")
    with pytest.raises(ImageDataError, match="is not in vision.data.classes"):
        load_labels(manifest, "test", ["ankle_boot"])


def test_png_and_zip_bytes_are_reproducible():
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert encode_png(pixels) == encode_png(pixels.copy())
    assert zip_bytes([("a.png", b"x")]) == zip_bytes([("a.png", b"x")])
    decoded, mode = decode_image(encode_png(pixels))
    assert mode == "L" and np.array_equal(decoded, pixels)


def test_image_files_rejects_mismatched_labels(tmp_path):
    import gzip

    folder = tmp_path / "usr/share/datasets/fashion-mnist"
    folder.mkdir(parents=True)
    header = (2051).to_bytes(4, "big") + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(2 * 784)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3)))
    with pytest.raises(ImageDataError, match="train has 2 images but 3 labels"):
        image_files(tmp_path)


def test_unreadable_image_names_the_manifest_row(tmp_path):
    (tmp_path / "s.zip").write_bytes(zip_bytes([("ok.png", encode_png(np.zeros((4, 4), np.uint8))),
                                                ("bad.png", b"")]))
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["split", "file", "member", "label"], ["train", "s.zip", "ok.png", "bag"],
                                      ["train", "s.zip", "bad.png", "bag"]])
    with pytest.raises(ImageDataError, match=r"manifest.csv row 2: s.zip:bad.png cannot be read"):
        load_images(tmp_path / "manifest.csv", "train")
    (tmp_path / "m2.csv").write_text("split,file\ntrain,s.zip\n")
    with pytest.raises(ImageDataError, match="row 0 \\(header\\): rule 'columns' broken"):
        read_manifest(tmp_path / "m2.csv")


def test_decode_rejects_truncated_png():
    content = encode_png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    with pytest.raises(OSError):
        decode_image(content[: len(content) // 2])
