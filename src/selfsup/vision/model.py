"""Image encoders and heads for self-supervised learning, as plain ``nn.Module``s.

Backbones map ``uint8 [B, C, H, W]`` images (or floats already in [0, 1]) to a representation ``[B, out_dim]``;
they scale and standardize pixels themselves, so an exported encoder takes raw pixels.

* ``ConvNet``  — three conv stages (w, 2w, 4w channels), max-pool between, then the last feature map average-pooled
  to a ``pool_grid`` x ``pool_grid`` grid (1: global average pool). The CPU default (w=16, grid 4): ~2 M
  multiply-adds per 28x28 image and a 1,024-dimensional representation.
* ``resnet18`` — torchvision's ResNet-18 with the CIFAR-style stem (3x3 stride-1 conv, no max-pool) that small
  images need: the ImageNet stem would shrink a 28x28 image to 7x7 before the first block.

Heads (``MLPHead``, ``DINOHead``) and ``update_ema`` / ``collapse_statistics`` are shared by every method.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

PIXEL_MEAN, PIXEL_STD = 0.286, 0.353  # Fashion-MNIST training-set pixel statistics (on [0, 1] pixels)


class _Standardize(nn.Module):
    """``uint8`` or [0, 1] float pixels -> standardized floats; fixed constants, so nothing to learn or export."""

    def __init__(self, mean: float = PIXEL_MEAN, std: float = PIXEL_STD):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return (images - self.mean) / self.std


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    """A small CNN for 28-32 px images.

    Shape: ``[B, in_channels, H, W] -> [B, 4 * width * pool_grid**2]``. A grid keeps where in the image a feature
    fired (a 28 px image leaves a 7x7 map): measured on validation images it beats global pooling by 4 points of
    kNN accuracy on Fashion-MNIST (benchmarks/RESULTS.md, 2026-12-02)."""

    def __init__(self, in_channels: int = 1, width: int = 32, pool_grid: int = 1):
        super().__init__()
        if in_channels < 1 or width < 1 or pool_grid < 1:
            raise ValueError(f"in_channels, width and pool_grid must be >= 1, got {in_channels}, {width}, {pool_grid}")
        self.standardize = _Standardize()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width), nn.MaxPool2d(2),  # 28 -> 14
            _conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),  # 14 -> 7
            _conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(pool_grid), nn.Flatten(),
        )
        self.out_dim = 4 * width * pool_grid**2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.standardize(images))


class ResNet18Small(nn.Module):
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool (small images).

    Shape: ``[B, in_channels, H, W] -> [B, 512 * pool_grid**2]`` (the last map average-pooled to a grid)."""

    def __init__(self, in_channels: int = 1, pool_grid: int = 1):
        super().__init__()
        if in_channels < 1 or pool_grid < 1:
            raise ValueError(f"in_channels and pool_grid must be >= 1, got {in_channels}, {pool_grid}")
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.avgpool = nn.AdaptiveAvgPool2d(pool_grid)
        net.fc = nn.Identity()
        self.standardize = _Standardize()
        self.net = net
        self.out_dim = 512 * pool_grid**2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(images))


def build_backbone(name: str, in_channels: int = 1, width: int = 32, pool_grid: int = 1) -> nn.Module:
    """The encoder named in ``vision.pretrain.backbone``; every backbone has ``out_dim``."""
    if name == "convnet":
        return ConvNet(in_channels, width, pool_grid)
    if name == "resnet18":
        return ResNet18Small(in_channels, pool_grid)
    raise ValueError(f"unknown backbone {name!r}; expected convnet or resnet18")


class MLPHead(nn.Module):
    """Projection / prediction head: ``num_layers`` Linear layers, BatchNorm + ReLU between them.

    SimCLR/MoCo v2/BYOL projectors and the BYOL/SimSiam predictor are all this module.
    Shape: ``[B, in_dim] -> [B, out_dim]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1 or num_layers < 1:
            raise ValueError(f"dims must be >= 1 and num_layers >= 1, got {in_dim}, {hidden_dim}, {out_dim}, "
                             f"{num_layers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i, (d_in, d_out) in enumerate(zip(dims, dims[1:])):
            last = i == num_layers - 1
            layers.append(nn.Linear(d_in, d_out, bias=last))
            if not last:
                layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DINOHead(nn.Module):
    """DINO head: MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer to ``out_dim``
    prototype scores (logits; the loss applies temperature and softmax).

    Shape: ``[B, in_dim] -> [B, out_dim]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bottleneck_dim: int = 128):
        super().__init__()
        if min(in_dim, hidden_dim, out_dim, bottleneck_dim) < 1:
            raise ValueError("DINOHead dims must be >= 1")
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(x), dim=-1))


class LinearProbe(nn.Module):
    """Logistic regression on standardized frozen features; the standardization is part of the module (so the
    exported encoder + probe takes raw pixels). Shape: ``[B, D] -> [B, num_classes]`` logits."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy for a momentum (EMA) target: same weights, no gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def update_ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for every parameter; buffers (BatchNorm
    statistics) are copied. ``momentum`` 0 copies the online weights, 1 freezes the target."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


@torch.no_grad()
def collapse_statistics(embeddings: torch.Tensor) -> dict[str, float]:
    """How spread out a batch of embeddings ``[N, D]`` is; both numbers are 0 for a fully collapsed encoder.

    * ``embedding_std``: mean over dimensions of the std of the L2-normalised embeddings, times sqrt(D) — about 1
      when they spread evenly over the sphere, 0 when all map to one point (the SimSiam paper's diagnostic).
    * ``effective_rank``: exp(entropy) of the normalised singular values of the centred embeddings (Roy &
      Vetterli 2007) — how many directions the embeddings really use (1..D); 0 when they are all equal."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"expected embeddings [N >= 2, D], got shape {tuple(embeddings.shape)}")
    z = F.normalize(embeddings.float(), dim=1)
    std = float(z.std(dim=0).mean() * z.shape[1] ** 0.5)
    singular = torch.linalg.svdvals(z - z.mean(dim=0))
    total = singular.sum()
    if total <= 1e-6 * z.shape[0]:
        return {"embedding_std": std, "effective_rank": 0.0}
    p = singular / total
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"embedding_std": std, "effective_rank": float(torch.exp(entropy))}


def save_encoder(encoder: nn.Module, path, backbone: str, width: int, in_channels: int, extra: dict,
                 pool_grid: int = 1) -> None:
    """``encoder.pt``: the weights plus what ``load_encoder`` needs to rebuild the architecture."""
    torch.save({"backbone": backbone, "width": width, "in_channels": in_channels, "pool_grid": pool_grid,
                "state_dict": encoder.state_dict(), **extra}, path)


def backbone_for(cfg, in_channels: int) -> nn.Module:
    """A freshly initialised backbone as ``vision.pretrain`` (``cfg``: backbone, width, pool_grid) describes it."""
    return build_backbone(cfg.backbone, in_channels, cfg.width, cfg.pool_grid)


def backbone_like(saved: dict) -> nn.Module:
    """A freshly initialised backbone of the architecture recorded in a saved ``encoder.pt`` dict (encoders saved
    before ``pool_grid`` existed pooled globally)."""
    return build_backbone(saved["backbone"], saved["in_channels"], saved["width"], saved.get("pool_grid", 1))


def encoder_from(saved: dict) -> nn.Module:
    """The trained encoder of a loaded ``encoder.pt`` dict, in eval mode."""
    encoder = backbone_like(saved)
    encoder.load_state_dict(saved["state_dict"])
    return encoder.eval()


def load_encoder(path) -> nn.Module:
    return encoder_from(torch.load(path, map_location="cpu", weights_only=True))
