"""Batched two-view augmentation (``selfsup.vision.batch_augment``): shapes and range, the transforms at their
extremes against exact references, per-image draws, determinism per seed, and the refused settings."""

import pytest
import torch

from selfsup.config import AugmentConfig, ConfigError
from selfsup.vision.augment import two_view_augmenter
from selfsup.vision.batch_augment import BatchTwoViews, generator, seed_for_step

CPU = torch.device("cpu")
NOTHING = dict(crop_scale=[1.0, 1.0], flip_p=0.0, jitter_p=0.0)  # every transform off: the views are the pixels


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)


def test_views_have_the_requested_size_range_and_differ(images):
    every = AugmentConfig(blur_p=0.5, erase_p=0.5, solarize_p=0.5)
    first, second = BatchTwoViews(every, 24)(images, generator(CPU, 1))
    assert first.shape == second.shape == (16, 1, 24, 24) and first.dtype == torch.float32
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0 + 1e-6 and not torch.equal(first, second)


def test_whole_image_crop_is_the_image_and_flip_mirrors_it(images):
    pixels = images.float() / 255
    same, _ = BatchTwoViews(AugmentConfig(**NOTHING), 28)(images, generator(CPU, 0))
    assert torch.allclose(same, pixels, atol=1e-5)
    mirrored, _ = BatchTwoViews(AugmentConfig(**{**NOTHING, "flip_p": 1.0}), 28)(images, generator(CPU, 0))
    assert torch.allclose(mirrored, pixels.flip(-1), atol=1e-5)


def test_solarize_only_the_second_view_as_torchvision_does(images):
    first, second = BatchTwoViews(AugmentConfig(**NOTHING, solarize_p=1.0), 28)(images, generator(CPU, 0))
    assert torch.allclose(first, images.float() / 255, atol=1e-5)
    expected = torch.where(images >= 128, 255 - images, images).float() / 255
    assert torch.allclose(second, expected, atol=1e-5)


def test_every_image_draws_its_own_crop(images):
    same = images[:1].expand(16, -1, -1, -1).contiguous()  # one image sixteen times
    views, _ = BatchTwoViews(AugmentConfig(crop_scale=[0.25, 0.5], flip_p=0.0, jitter_p=0.0), 28)(same,
                                                                                                   generator(CPU, 3))
    distinct = {tuple(v.flatten()[:50].tolist()) for v in views}
    assert len(distinct) == 16


def test_jitter_blur_and_erase_keep_range_and_change_only_chosen_images(images):
    cfg = AugmentConfig(**{**NOTHING, "jitter_p": 0.5, "blur_p": 0.5, "erase_p": 0.5})
    views, _ = BatchTwoViews(cfg, 28)(images, generator(CPU, 5))
    pixels = images.float() / 255
    changed = (views - pixels).abs().flatten(1).amax(1) > 1e-5  # [B]
    assert 0 < int(changed.sum()) < 16, "with p = 0.5 some images must change and some not"
    assert 0.0 <= float(views.min()) and float(views.max()) <= 1.0 + 1e-6


def test_rgb_grayscale_makes_channels_equal():
    torch.manual_seed(1)
    rgb = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    views, _ = BatchTwoViews(AugmentConfig(**NOTHING, grayscale_p=1.0), 16)(rgb, generator(CPU, 0))
    assert torch.allclose(views[:, 0], views[:, 1]) and torch.allclose(views[:, 1], views[:, 2])


def test_same_seed_same_views_other_step_other_views(images):
    augment = two_view_augmenter(AugmentConfig(), 28, CPU, seed=7)
    a, b, c = augment(images, 1), augment(images, 1), augment(images, 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert seed_for_step(7, 1) != seed_for_step(7, 2) != seed_for_step(8, 1)


def test_bad_input_and_settings_are_refused(images):
    with pytest.raises(ValueError, match="uint8"):
        BatchTwoViews(AugmentConfig(), 28)(images.float(), generator(CPU, 0))
    with pytest.raises(ValueError, match="hue"):
        BatchTwoViews(AugmentConfig(hue=0.1), 28)
    with pytest.raises(ConfigError, match="hue"):
        AugmentConfig(hue=0.1, batched=True).check("vision.pretrain.augment")


def test_image_throughput_benchmark_runs_on_the_fixture_pool(fixture_data):
    """benchmarks/image_throughput.py --quick on the 50 fixture images: the three steps run, the JSON line ends it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "benchmarks/image_throughput.py", "--quick", "--device", "cpu",
                             f"vision.data.manifest={fixture_data / 'images/manifest.csv'}", "tracking.enabled=false"],
                            cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and "batch 50 instead of 128" in result.stdout
    assert all(summary[key] > 0 for key in ("images_per_s_simclr_per_image", "images_per_s_simclr_batched",
                                            "images_per_s_supervised", "ratio_simclr_vs_supervised"))
