import pytest
import torch
from torch import nn

from selfsup.config import SSLPretrainConfig
from selfsup.vision.model import (
    ConvNet, DINOHead, MLPHead, build_backbone, collapse_statistics, frozen_copy, load_encoder, save_encoder,
    update_ema,
)
from selfsup.vision.ssl_common import CollapseError, check_collapse, monitor_collapse


@pytest.mark.parametrize("name,dim", [("convnet", 32), ("resnet18", 512)])
def test_backbones_take_uint8_small_images(name, dim):
    encoder = build_backbone(name, in_channels=1, width=8).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    out = encoder(images)
    assert out.shape == (3, dim) == (3, encoder.out_dim)
    # uint8 pixels and the same pixels as [0, 1] floats give the same features
    assert torch.allclose(out, encoder(images.float() / 255), atol=1e-5)


@pytest.mark.parametrize("name,channels", [("convnet", 32), ("resnet18", 512)])
def test_a_pool_grid_keeps_a_grid_of_the_last_feature_map(name, channels):
    encoder = build_backbone(name, in_channels=1, width=8, pool_grid=4).eval()
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    grid = encoder(images)
    assert grid.shape == (2, channels * 16) == (2, encoder.out_dim)
    # the grid's cells average to the global pool when they cover equal areas: 2x2 cells on the convnet's 7x7 map
    # do not (7 is odd), so compare a 2x2 grid on a 32 px image (8x8 map) with global pooling
    if name == "convnet":
        two = build_backbone(name, 1, 8, pool_grid=2).eval()
        one = build_backbone(name, 1, 8, pool_grid=1).eval()
        one.load_state_dict(two.state_dict())
        big = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
        cells = two(big).view(2, channels, 4)
        assert torch.allclose(cells.mean(dim=2), one(big), atol=1e-5)
    with pytest.raises(ValueError, match="pool_grid"):
        build_backbone(name, pool_grid=0)


def test_resnet18_keeps_resolution_in_the_stem():
    encoder = build_backbone("resnet18")
    assert encoder.net.conv1.stride == (1, 1) and isinstance(encoder.net.maxpool, nn.Identity)


def test_heads_document_shapes_and_reject_bad_arguments():
    assert MLPHead(32, 64, 16)(torch.randn(5, 32)).shape == (5, 16)
    assert len([m for m in MLPHead(8, 8, 8, num_layers=3).net if isinstance(m, nn.Linear)]) == 3
    assert DINOHead(32, 64, 100)(torch.randn(5, 32)).shape == (5, 100)
    with pytest.raises(ValueError):
        MLPHead(0, 8, 8)
    with pytest.raises(ValueError):
        ConvNet(width=0)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vit")


def test_ema_update_moves_target_by_one_minus_momentum():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    t0, o0 = target.weight.detach().clone(), online.weight.detach().clone()
    update_ema(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * t0 + 0.1 * o0)
    update_ema(target, online, 0.0)
    assert torch.equal(target.weight, online.weight)
    frozen = frozen_copy(online)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError):
        update_ema(target, online, 1.5)


class Collapsed(nn.Module):
    """A deliberately collapsed encoder: every image maps to the same embedding."""

    def forward(self, images):
        return torch.ones(images.shape[0], 16)


def test_collapse_monitor_detects_a_collapsed_encoder_and_the_gate_fails():
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    stats = monitor_collapse(Collapsed(), images, torch.device("cpu"))
    assert stats == {"embedding_std": 0.0, "effective_rank": 0.0}
    with pytest.raises(CollapseError, match="simclr pretraining COLLAPSED: embedding std 0.0000 < min_embedding_std"):
        check_collapse(stats, SSLPretrainConfig(method="simclr"))
    healthy = collapse_statistics(torch.randn(256, 16))
    assert healthy["embedding_std"] > 0.9 and healthy["effective_rank"] > 12
    check_collapse(healthy, SSLPretrainConfig())  # does not raise
    # collapsed onto a line (dimensional collapse): rank ~1, caught by the rank threshold
    line = torch.randn(256, 1) * torch.randn(1, 16)
    assert collapse_statistics(line)["effective_rank"] < 1.01


def test_saved_encoder_loads_back_identically(tmp_path):
    encoder = build_backbone("convnet", 1, 4).eval()
    save_encoder(encoder, tmp_path / "encoder.pt", "convnet", 4, 1, {"method": "simclr"})
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(load_encoder(tmp_path / "encoder.pt")(images), encoder(images))


def test_saved_encoder_keeps_its_pool_grid_and_older_files_pool_globally(tmp_path):
    encoder = build_backbone("convnet", 1, 4, pool_grid=3).eval()
    save_encoder(encoder, tmp_path / "grid.pt", "convnet", 4, 1, {}, pool_grid=3)
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(load_encoder(tmp_path / "grid.pt")(images), encoder(images))
    assert load_encoder(tmp_path / "grid.pt").out_dim == 16 * 9
    older = build_backbone("convnet", 1, 4).eval()
    saved = {"backbone": "convnet", "width": 4, "in_channels": 1, "state_dict": older.state_dict()}
    torch.save(saved, tmp_path / "older.pt")  # written before pool_grid was recorded
    assert load_encoder(tmp_path / "older.pt").out_dim == 16
