"""Self-supervised losses for images, pure torch, each a plain ``nn.Module`` with its shapes documented.

* ``NTXentLoss``          SimCLR: normalized-temperature cross entropy over the 2B views of a batch.
* ``InfoNCEWithQueue``    MoCo v2: one positive key per query against a queue of negatives (``MemoryQueue``).
* ``NegativeCosineLoss``  BYOL / SimSiam: -cos(prediction, stop-gradient(target)).
* ``DINOLoss``            DINO: cross entropy between a centred, sharpened teacher and the student.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two [B, D] tensors of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent (InfoNCE over both views).

    For 2B L2-normalised embeddings, the loss of view i is ``-log(exp(s(i, j)/T) / sum_{k != i} exp(s(i, k)/T))``
    where j is the other view of the same image and s the cosine similarity; the result is the mean over all 2B
    views. For orthogonal images whose two views are identical it equals ``log(1 + (2B - 2) exp(-1/T))``.

    Shape: ``z1 [B, D], z2 [B, D] -> scalar``."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        _check_pair(z1, z2, "NTXentLoss")
        if z1.shape[0] < 2:
            raise ValueError("NTXentLoss needs at least 2 images per batch (the other images are the negatives)")
        batch = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, D]
        logits = z @ z.T / self.temperature  # [2B, 2B]
        logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
        positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
        return F.cross_entropy(logits, positives)


class MemoryQueue(nn.Module):
    """MoCo's FIFO queue of ``size`` past keys ``[size, dim]``, L2-normalised; ``enqueue`` overwrites the oldest.

    Starts filled with random unit vectors (as in MoCo) so the loss is defined from the first step."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"size and dim must be >= 1, got {size}, {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Shape: ``keys [B, dim]`` with ``size % B == 0`` (so a batch never wraps around)."""
        size = self.keys.shape[0]
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1] or size % keys.shape[0]:
            raise ValueError(f"enqueue expects [B, {self.keys.shape[1]}] with {size} % B == 0, got "
                             f"{tuple(keys.shape)}")
        start = int(self.pointer)
        self.keys[start : start + keys.shape[0]] = F.normalize(keys.detach().float(), dim=1)
        self.pointer.fill_((start + keys.shape[0]) % size)


class InfoNCEWithQueue(nn.Module):
    """MoCo v2 loss: for each query the positive is its key (the other view through the momentum encoder), the
    negatives are the queue. Keys carry no gradient.

    Shape: ``queries [B, D], keys [B, D], queue [K, D] -> scalar``."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        _check_pair(queries, keys, "InfoNCEWithQueue")
        if queue.ndim != 2 or queue.shape[1] != queries.shape[1]:
            raise ValueError(f"queue must be [K, {queries.shape[1]}], got {tuple(queue.shape)}")
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
        negative = q @ queue.detach().float().T  # [B, K]
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class NegativeCosineLoss(nn.Module):
    """BYOL / SimSiam: mean of ``-cos(prediction, target)`` with the target's gradient stopped (the stop-gradient
    is what keeps these negative-free methods from collapsing). BYOL's ``2 - 2 cos`` differs only by an affine map.

    Shape: ``prediction [B, D], target [B, D] -> scalar`` in [-1, 1]."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(prediction, target, "NegativeCosineLoss")
        return -F.cosine_similarity(prediction.float(), target.detach().float(), dim=1).mean()


class DINOLoss(nn.Module):
    """DINO: the student's softmax (temperature ``student_temperature``) is trained towards the teacher's centred
    and sharpened softmax (``teacher_temperature`` < student's), for every pair of *different* views. Centering
    (subtracting an EMA of the teacher's mean output) stops one prototype from dominating; sharpening stops the
    uniform solution: together they prevent collapse. Call ``update_center`` with the teacher outputs after each step.

    Shape: ``student [V, B, K], teacher [T, B, K] -> scalar`` (V student views, the first T of them also seen by
    the teacher, in the same order)."""

    def __init__(self, out_dim: int, teacher_temperature: float = 0.04, student_temperature: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        if out_dim < 1 or teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("out_dim must be >= 1 and temperatures > 0")
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum}")
        self.teacher_temperature, self.student_temperature = teacher_temperature, student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probabilities(self, teacher: torch.Tensor) -> torch.Tensor:
        return F.softmax((teacher.detach().float() - self.center) / self.teacher_temperature, dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
            raise ValueError(f"expected student [V, B, K] and teacher [T, B, K], got {tuple(student.shape)} and "
                             f"{tuple(teacher.shape)}")
        if student.shape[-1] != self.center.shape[-1]:
            raise ValueError(f"outputs have {student.shape[-1]} prototypes, the loss was built for "
                             f"{self.center.shape[-1]}")
        targets = self.teacher_probabilities(teacher)  # [T, B, K], no gradient
        log_student = F.log_softmax(student.float() / self.student_temperature, dim=-1)  # [V, B, K]
        total, pairs = 0.0, 0
        for t in range(targets.shape[0]):
            for s in range(log_student.shape[0]):
                if s == t:
                    continue  # the same view on both sides teaches nothing
                total = total + (-targets[t] * log_student[s]).sum(dim=-1).mean()
                pairs += 1
        return total / max(pairs, 1)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``center <- m * center + (1 - m) * mean teacher output`` over every view and image of the batch."""
        batch_mean = teacher.detach().float().reshape(-1, teacher.shape[-1]).mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1.0 - self.center_momentum)
