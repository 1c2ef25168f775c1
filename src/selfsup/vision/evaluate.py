"""Evaluation of a frozen image encoder: what self-supervised pretraining bought, in labels.

For the pretrained encoder and for the same architecture randomly initialised (same seed, no training):
* **kNN accuracy**: each held-out image takes the weighted vote of its ``k`` nearest labelled pool images (cosine
  similarity of the frozen features, weights ``exp(s / T)``, as in Wu et al. 2018);
* **linear-probe accuracy** at each label fraction: a logistic-regression layer trained on frozen features of a
  stratified ``fraction`` of the labelled pool.
Beside them, a **supervised-from-scratch** model (same backbone + linear layer, trained end to end on the same
labelled subset for ``supervised_steps``) shows what the labels alone achieve, and **raw pixels** (``RawPixels``: no
encoder at all, the same kNN and probe protocol) are the classical baseline a practitioner tries first.

Everything is computed on the held-out split; pretraining never saw its images or any label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from selfsup.config import SSLEvaluateConfig
from selfsup.vision.model import LinearProbe


class RawPixels(nn.Module):
    """The classical arm: no encoder, the image itself as the feature vector. Shape: ``uint8 [B, C, H, W] ->
    float [B, C*H*W]`` in [0, 1]; kNN (cosine) and the linear probe (which standardizes) then run unchanged."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
        return images.float().flatten(1) / 255.0


@torch.no_grad()
def embed(encoder: nn.Module, images: np.ndarray, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """Frozen features ``[N, D]`` (float32, CPU) of ``uint8 [N, C, H, W]`` images, in eval mode."""
    encoder.eval()
    out = [encoder(torch.from_numpy(images[i : i + batch]).to(device)).float().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, k: int,
                temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN on cosine similarity. Shapes: ``bank [N, D], bank_labels [N], queries [M, D] -> [M]``."""
    if k < 1 or k > len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}], got {k}")
    bank = F.normalize(bank, dim=1)
    predictions = []
    for i in range(0, len(queries), chunk):
        similarity = F.normalize(queries[i : i + chunk], dim=1) @ bank.T  # [m, N]
        top_sim, top_idx = similarity.topk(k, dim=1)  # [m, k]
        votes = torch.zeros(len(top_sim), num_classes)
        votes.scatter_add_(1, bank_labels[top_idx], torch.exp(top_sim / temperature))
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, lr: float,
                       seed: int, min_steps: int = 300) -> LinearProbe:
    """AdamW on cached features, mini-batches of 256, cosine learning-rate decay; at least ``min_steps`` steps, so a
    probe on 1 % of the labels (one batch per epoch) is trained as far as one on all of them."""
    torch.manual_seed(seed)
    probe = LinearProbe(features.shape[1], num_classes)
    probe.mean.copy_(features.mean(dim=0))
    probe.std.copy_(features.std(dim=0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    batch = min(256, len(features))
    steps_per_epoch = max(1, len(features) // batch)
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(probe(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return probe.eval()


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified ``fraction`` of ``labels`` (at least one per class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, max(1, round(len(members) * fraction)), replace=False))
    return np.sort(np.concatenate(chosen))


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).float().mean())


@dataclass
class FrozenScores:
    knn: float
    probe: dict[str, float]  # label fraction -> held-out accuracy


def score_frozen(encoder: nn.Module, pool: np.ndarray, pool_labels: np.ndarray, held_out: np.ndarray,
                 held_out_labels: np.ndarray, num_classes: int, cfg: SSLEvaluateConfig, device: torch.device,
                 seed: int) -> tuple[FrozenScores, LinearProbe, torch.Tensor]:
    """kNN and linear-probe accuracies of a frozen encoder; also the 100%-labels probe and the held-out features."""
    bank, queries = embed(encoder, pool, device), embed(encoder, held_out, device)
    bank_labels, query_labels = torch.from_numpy(pool_labels), torch.from_numpy(held_out_labels)
    knn = accuracy(knn_predict(bank, bank_labels, queries, num_classes, cfg.knn_k, cfg.knn_temperature), query_labels)
    probes, full_probe = {}, None
    for fraction in cfg.label_fractions:
        subset = torch.from_numpy(stratified_subset(pool_labels, fraction, seed))
        probe = train_linear_probe(bank[subset], bank_labels[subset], num_classes, cfg.probe_epochs,
                                   cfg.probe_learning_rate, seed)
        with torch.no_grad():
            probes[f"{fraction:g}"] = accuracy(probe(queries).argmax(dim=1), query_labels)
        if fraction == 1.0:
            full_probe = probe
    return FrozenScores(knn, probes), full_probe, queries


def train_supervised(backbone: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int,
                     lr: float, batch_size: int, image_size: int, device: torch.device, seed: int) -> nn.Module:
    """Backbone + linear layer trained end to end from scratch on the labelled subset (crop + flip augmentation)."""
    from selfsup.vision.augment import light_transform

    torch.manual_seed(seed)
    model = nn.Sequential(backbone, nn.Linear(backbone.out_dim, num_classes)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    transform = light_transform(image_size)
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, len(images))
    for _ in range(steps):
        idx = rng.choice(len(images), batch_size, replace=False)
        batch = torch.stack([transform(torch.from_numpy(img)) for img in images[idx]]).to(device)
        loss = F.cross_entropy(model(batch), torch.from_numpy(labels[idx]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def predict_classes(model: nn.Module, images: np.ndarray, device: torch.device, batch: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(torch.from_numpy(images[i : i + batch]).to(device)).argmax(dim=1).cpu()
                      for i in range(0, len(images), batch)])
