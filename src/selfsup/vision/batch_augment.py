"""Two-view augmentation of a whole batch at once, on the device that trains (``vision.pretrain.augment.batched``).

``TwoViews`` (``selfsup.vision.augment``) runs torchvision's pipeline image by image on the CPU: on a GPU the
model waits for it (the ``base`` preset's ResNet-18 ran at 1,345 images/s on an H100, about what the 2-core CPU
default does). ``BatchTwoViews`` draws every image's parameters as tensors and applies each transform to the
batch in one operation where the batch lives:

    uint8 [B, C, H, W] --crop + flip: one affine grid per image, grid_sample (bilinear)--> float [B, C, S, S] in [0, 1]
      --colour jitter (brightness, contrast, saturation; in torchvision's fixed order, each image with ``jitter_p``)
      --grayscale (``grayscale_p``) --Gaussian blur (``blur_p``, sigma per image, separable) --solarize (2nd view)
      --random erasing (``erase_p``)

Same knobs as ``TwoViews`` with the same meaning (crop area range and aspect ratios 3/4-4/3, as
``RandomResizedCrop``); hue jitter is not offered here (it needs an HSV round trip per pixel) and is refused with a
message. The crop is resampled bilinearly without antialiasing, so a view is close to, not the same as, torchvision's.
Every draw comes from one ``torch.Generator`` on the batch's device, seeded per step (``seed_for_step``), so a
resumed run and every rank of a multi-process run draw exactly what a single uninterrupted process draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.config import AugmentConfig

ASPECT_RATIOS = (3 / 4, 4 / 3)  # RandomResizedCrop's default ratio range
ERASE_SCALE = (0.02, 0.2)  # RandomErasing's area range, as TwoViews uses it
ERASE_RATIOS = (0.3, 3.3)


def seed_for_step(seed: int, step: int) -> int:
    """The generator seed of one training step: distinct per step, the same on every rank and after a resume."""
    return (seed * 1_000_003 + step) % (2**63)


def _uniform(low: float, high: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _log_uniform(low: float, high: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.exp(_uniform(math.log(low), math.log(high), n, gen, device))


def _gray(images: torch.Tensor) -> torch.Tensor:
    """Luma of ``[B, C, S, S]`` images as ``[B, 1, S, S]`` (ITU-R 601, torchvision's weights); C = 1 passes through."""
    if images.shape[1] == 1:
        return images
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


class BatchTwoViews:
    """``uint8 [B, C, H, W]`` (any device) ``-> (float [B, C, size, size], float [B, C, size, size])`` on that device.

    Call with the batch and a seeded generator on the batch's device (``generator(device, seed)``)."""

    def __init__(self, cfg: AugmentConfig, size: int):
        if cfg.hue > 0:
            raise ValueError("augment.hue > 0 is not available with augment.batched (per-pixel HSV conversion); "
                             "set augment.hue: 0 or augment.batched: false")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.cfg = cfg
        self.size = size

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 [B, C, H, W] images, got {images.dtype} {tuple(images.shape)}")
        if gen.device != images.device:
            raise ValueError(f"the generator is on {gen.device}, the images on {images.device}: put both on one device")
        pixels = images.float() / 255.0  # [B, C, H, W]
        return self.view(pixels, gen, solarize_p=0.0), self.view(pixels, gen, solarize_p=self.cfg.solarize_p)

    def view(self, pixels: torch.Tensor, gen: torch.Generator, solarize_p: float) -> torch.Tensor:
        """One augmented view of float ``[B, C, H, W]`` pixels in [0, 1]."""
        cfg = self.cfg
        out = self.crop_and_flip(pixels, gen)  # [B, C, S, S]
        if cfg.jitter_p > 0:
            out = self.jitter(out, gen)
        if cfg.grayscale_p > 0 and out.shape[1] == 3:
            chosen = self.chosen(cfg.grayscale_p, out, gen)
            out = torch.where(chosen, _gray(out).expand_as(out), out)
        if cfg.blur_p > 0:
            out = self.blur(out, gen)
        if solarize_p > 0:
            # TwoViews solarizes uint8 pixels >= 128: the same cut on [0, 1], half a level below so that
            # resampling's rounding (~1e-6) does not move a pixel of exactly 128 across it
            chosen = self.chosen(solarize_p, out, gen)
            out = torch.where(chosen & (out >= 127.5 / 255), 1.0 - out, out)
        if cfg.erase_p > 0:
            out = self.erase(out, gen)
        return out

    @staticmethod
    def chosen(p: float, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Which images a transform of probability ``p`` applies to, as a ``[B, 1, 1, 1]`` bool mask."""
        return (torch.rand(len(images), generator=gen, device=images.device) < p).view(-1, 1, 1, 1)

    def crop_and_flip(self, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """RandomResizedCrop + horizontal flip of every image: ``[B, C, H, W] -> [B, C, S, S]``.

        A crop of relative width w and height h centred at (cx, cy) (normalised coordinates in [-1, 1]) is the
        affine map x' = w·x + cx, y' = h·y + cy of the output grid; a flip negates w."""
        n, device, cfg = len(pixels), pixels.device, self.cfg
        area = _uniform(cfg.crop_scale[0], cfg.crop_scale[1], n, gen, device)
        ratio = _log_uniform(ASPECT_RATIOS[0], ASPECT_RATIOS[1], n, gen, device)
        height, width = pixels.shape[-2:]
        # relative sides: w·h = area (of the image), w/h = ratio in pixels; a box that does not fit takes ratio 1
        # (RandomResizedCrop draws again, then falls back to the whole image)
        w = torch.sqrt(area * ratio * height / width)
        h = torch.sqrt(area / ratio * width / height)
        fits = (w <= 1) & (h <= 1)
        w = torch.where(fits, w, torch.sqrt(area * height / width)).clamp(max=1.0)
        h = torch.where(fits, h, torch.sqrt(area * width / height)).clamp(max=1.0)
        cx = (1 - w) * (2 * torch.rand(n, generator=gen, device=device) - 1)
        cy = (1 - h) * (2 * torch.rand(n, generator=gen, device=device) - 1)
        flip = torch.rand(n, generator=gen, device=device) < cfg.flip_p
        w = torch.where(flip, -w, w)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
        grid = F.affine_grid(theta, [n, pixels.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def jitter(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """ColorJitter (brightness, contrast, saturation) on the images chosen with ``jitter_p``."""
        cfg, n, device = self.cfg, len(images), images.device
        out = images
        if cfg.brightness > 0:
            factor = _uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, n, gen, device).view(-1, 1, 1, 1)
            out = (out * factor).clamp(0, 1)
        if cfg.contrast > 0:
            factor = _uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, n, gen, device).view(-1, 1, 1, 1)
            # [B, 1, 1, 1]; summed in float64 so that the thread count (summation order) cannot change a view
            mean = _gray(out).double().mean(dim=(1, 2, 3), keepdim=True).float()
            out = (factor * out + (1 - factor) * mean).clamp(0, 1)
        if cfg.saturation > 0 and out.shape[1] == 3:
            factor = _uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, n, gen, device).view(-1, 1, 1, 1)
            out = (factor * out + (1 - factor) * _gray(out)).clamp(0, 1)
        return torch.where(self.chosen(cfg.jitter_p, images, gen), out, images)

    def blur(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Gaussian blur with a sigma per image (kernel ~10 % of the side, as ``TwoViews``), on the chosen images."""
        cfg, (n, c, s, _) = self.cfg, images.shape
        kernel = max(3, (s // 10) | 1)
        sigma = _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n, gen, images.device)  # [B]
        offsets = torch.arange(kernel, device=images.device, dtype=images.dtype) - kernel // 2  # [k]
        weights = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))  # [B, k]
        weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, k]: one per channel
        flat = F.pad(images.reshape(1, n * c, s, s), [kernel // 2] * 4, mode="reflect")
        flat = F.conv2d(flat, weights.view(n * c, 1, 1, kernel), groups=n * c)  # along x
        flat = F.conv2d(flat, weights.view(n * c, 1, kernel, 1), groups=n * c)  # along y
        return torch.where(self.chosen(cfg.blur_p, images, gen), flat.view(n, c, s, s), images)

    def erase(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """RandomErasing (value 0) of one rectangle per chosen image."""
        n, _, s, _ = images.shape
        device = images.device
        area = _uniform(ERASE_SCALE[0], ERASE_SCALE[1], n, gen, device) * s * s
        ratio = _log_uniform(ERASE_RATIOS[0], ERASE_RATIOS[1], n, gen, device)
        h = torch.sqrt(area * ratio).round().clamp(1, s)  # [B] pixels
        w = torch.sqrt(area / ratio).round().clamp(1, s)
        top = (torch.rand(n, generator=gen, device=device) * (s - h + 1)).floor()
        left = (torch.rand(n, generator=gen, device=device) * (s - w + 1)).floor()
        rows = torch.arange(s, device=device).view(1, s, 1)
        cols = torch.arange(s, device=device).view(1, 1, s)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))  # [B, S, S]
        erased = self.chosen(self.cfg.erase_p, images, gen) & inside.unsqueeze(1)  # [B, 1, S, S]
        return images.masked_fill(erased, 0.0)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)
