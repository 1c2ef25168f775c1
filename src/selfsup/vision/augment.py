"""Two-view augmentation for image self-supervised learning, built from ``torchvision.transforms.v2``.

``TwoViews(cfg, size)`` turns a ``uint8 [B, C, H, W]`` batch into two independently augmented float batches in
[0, 1]. Every image draws its own crop, flip, jitter, etc. (v2 transforms applied to a whole batch would share one
draw). Solarization is applied to the second view only, as in BYOL and DINO. ``two_view_augmenter`` is what the recipes
call: this per-image pipeline, or the batched one on the training device (``augment.batched``,
``selfsup.vision.batch_augment``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

from selfsup.config import AugmentConfig


def view_transform(cfg: AugmentConfig, size: int, solarize_p: float) -> v2.Compose:
    """One view's pipeline on a single ``uint8 [C, H, W]`` image -> ``float [C, size, size]`` in [0, 1]."""
    steps: list = [
        v2.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
    ]
    if cfg.jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                                    p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(cfg.grayscale_p))
    if cfg.blur_p > 0:
        kernel = max(3, (size // 10) | 1)  # odd, ~10% of the image side
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(cfg.blur_sigma))], p=cfg.blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # on uint8 pixels: invert those >= 128
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if cfg.erase_p > 0:
        steps.append(v2.RandomErasing(p=cfg.erase_p, scale=(0.02, 0.2)))
    return v2.Compose(steps)


class TwoViews:
    """``uint8 [B, C, H, W] -> (float [B, C, size, size], float [B, C, size, size])``."""

    def __init__(self, cfg: AugmentConfig, size: int):
        self.first = view_transform(cfg, size, solarize_p=0.0)
        self.second = view_transform(cfg, size, solarize_p=cfg.solarize_p)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 [B, C, H, W] images, got {images.dtype} {tuple(images.shape)}")
        return (torch.stack([self.first(image) for image in images]),
                torch.stack([self.second(image) for image in images]))


def light_transform(size: int) -> v2.Compose:
    """Crop + flip only: the augmentation of the supervised-from-scratch baseline."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True)])


def two_view_augmenter(cfg: AugmentConfig, size: int, device: torch.device,
                       seed: int) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """The recipes' augmentation: ``augment(images, step)`` with ``uint8 [B, C, H, W]`` CPU images -> two float views
    ``[B, C, size, size]``: per image with torchvision on the CPU (``TwoViews``), or, with ``cfg.batched``, the whole
    batch on ``device`` with draws seeded by ``seed`` and ``step`` (``BatchTwoViews``)."""
    if not cfg.batched:
        per_image = TwoViews(cfg, size)
        return lambda images, step: per_image(images)
    from selfsup.vision.batch_augment import BatchTwoViews, generator, seed_for_step

    batched, draws = BatchTwoViews(cfg, size), generator(device, seed)  # one generator, re-seeded every step
    return lambda images, step: batched(images.to(device, non_blocking=True),
                                        draws.manual_seed(seed_for_step(seed, step)))
