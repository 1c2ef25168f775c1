"""Tiny CPU runs of every image SSL method on real Fashion-MNIST pixels: finite loss, parameters change, the
target/teacher behaves as its method defines, and the collapse gate fails a run with a clear message."""

import copy

import numpy as np
import pytest
import torch

from selfsup.config import SSLPretrainConfig
from selfsup.vision.augment import TwoViews
from selfsup.vision.model import build_backbone
from selfsup.vision import contrastive, self_distillation
from selfsup.vision.ssl_common import CollapseError, learning_rate_at, momentum_at, pool_batches
from selfsup.vision.stages import pretrain_ssl
from selfsup.tracking import NullTracker


@pytest.fixture(scope="module")
def pool(fixture_data) -> np.ndarray:
    """The 50 real Fashion-MNIST training images of the fixture data (5 per class)."""
    from selfsup.vision.data import load_images

    images = load_images(fixture_data / "images/manifest.csv", "train")
    assert images.shape == (50, 1, 28, 28)
    return images


def tiny(method: str, **overrides) -> SSLPretrainConfig:
    settings = dict(method=method, width=4, hidden_dim=16, projection_dim=8, batch_size=16, max_steps=3,
                    warmup_steps=1, queue_size=32, dino_out_dim=32, monitor_every=3, monitor_images=32,
                    min_embedding_std=0.0, min_effective_rank=0.0)
    cfg = SSLPretrainConfig(**{**settings, **overrides})
    cfg.loop.progress = False
    return cfg


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "dino"])
def test_each_method_trains_a_few_steps(method, pool):
    torch.manual_seed(0)
    cfg = tiny(method)
    initial = build_backbone("convnet", 1, 4).state_dict()  # the same seeded initialisation the recipe starts from
    torch.manual_seed(0)
    encoder, result = pretrain_ssl(cfg, pool, torch.device("cpu"), NullTracker())
    assert result.steps == 3 and len(result.history) == 3 and np.isfinite([h["loss"] for h in result.history]).all()
    changed = [k for k, v in encoder.state_dict().items() if v.dtype.is_floating_point and
               not torch.equal(v, initial[k])]
    assert changed, "training did not change any encoder parameter"
    assert result.monitor[-1]["step"] == 3 and result.effective_rank > 0


def test_byol_teacher_is_an_ema_of_the_online_network(pool, monkeypatch):
    """Capture the online and teacher encoders and check teacher = m * teacher + (1 - m) * online at each step."""
    seen = []
    real_update = self_distillation.update_ema

    def spy(target, online, momentum):
        before = copy.deepcopy(target.state_dict())
        real_update(target, online, momentum)
        seen.append((before, copy.deepcopy(online.state_dict()), copy.deepcopy(target.state_dict()), momentum))

    monkeypatch.setattr(self_distillation, "update_ema", spy)
    cfg = tiny("byol", momentum=0.9)
    encoder, _ = self_distillation.train(cfg, pool, torch.device("cpu"), NullTracker())
    assert [round(m, 6) for *_, m in seen[::2]] == [round(momentum_at(s, cfg), 6) for s in (1, 2, 3)]
    before, online, after, momentum = seen[0]
    name = "features.0.0.weight"
    assert torch.allclose(after[name], momentum * before[name] + (1 - momentum) * online[name])
    assert not torch.equal(after[name], online[name]), "the BYOL target must lag the online network"


def test_simsiam_has_no_momentum_network(pool, monkeypatch):
    calls = []
    monkeypatch.setattr(self_distillation, "update_ema", lambda *a: calls.append(a))
    self_distillation.train(tiny("simsiam"), pool, torch.device("cpu"), NullTracker())
    assert calls == []


def test_moco_fills_its_queue_with_keys(pool, monkeypatch):
    queues = []
    real = contrastive.MemoryQueue

    def capture(size, dim):
        queues.append(real(size, dim))
        return queues[-1]

    monkeypatch.setattr(contrastive, "MemoryQueue", capture)
    contrastive.train(tiny("moco"), pool, torch.device("cpu"), NullTracker())
    (queue,) = queues
    assert int(queue.pointer) == (3 * 16) % 32  # three batches of 16 enqueued into a queue of 32 (wrapped once)


def test_a_collapsing_run_fails_with_a_message_saying_so(pool):
    cfg = tiny("simclr", min_effective_rank=1000.0)
    with pytest.raises(CollapseError, match="COLLAPSED: effective rank .* < min_effective_rank 1000") as info:
        pretrain_ssl(cfg, pool, torch.device("cpu"), NullTracker())
    assert info.value.result is not None and info.value.result.steps == 3


def test_schedules_and_batches():
    cfg = SSLPretrainConfig(max_steps=100, warmup_steps=10, learning_rate=1.0, momentum=0.99)
    assert learning_rate_at(5, cfg) == pytest.approx(0.5) and learning_rate_at(10, cfg) == pytest.approx(1.0)
    assert learning_rate_at(100, cfg) == pytest.approx(0.0, abs=1e-9)
    assert momentum_at(0, cfg) == pytest.approx(0.99) and momentum_at(100, cfg) == pytest.approx(1.0)
    pool = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    batches = list(pool_batches(pool, 4, 5, seed=0))
    assert len(batches) == 5 and all(b.shape == (4, 1, 1, 1) for b in batches)
    assert len({int(v) for b in batches[:2] for v in b.flatten()}) == 8  # one epoch: no image twice
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(pool_batches(pool, 11, 1, 0))


def test_two_views_differ_and_solarize_only_the_second():
    from selfsup.config import AugmentConfig

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    v1, v2 = TwoViews(AugmentConfig(), 24)(images)
    assert v1.shape == v2.shape == (8, 1, 24, 24) and v1.dtype == torch.float32
    assert 0.0 <= float(v1.min()) and float(v1.max()) <= 1.0 and not torch.equal(v1, v2)
    only_solarize = AugmentConfig(crop_scale=[1.0, 1.0], flip_p=0.0, jitter_p=0.0, solarize_p=1.0)
    first, second = TwoViews(only_solarize, 28)(images)
    assert torch.allclose(first, images.float() / 255)
    assert torch.allclose(second, torch.where(images >= 128, 255 - images, images).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        TwoViews(AugmentConfig(), 28)(images.float())
