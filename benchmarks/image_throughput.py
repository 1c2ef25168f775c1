"""Image SSL throughput: does augmentation keep the model fed? SimCLR with per-image CPU augmentation and with batched
augmentation on the training device, against a supervised step of the same network on the same batches.

    python benchmarks/image_throughput.py [--rounds 5] [--steps-per-round 4] [--device cpu|cuda] [--quick]
                                          [key=value overrides, e.g. preset=base]

Three training steps, same backbone (``vision.pretrain.backbone``, width, image size), global batch
(``vision.pretrain.batch_size``), precision and memory format, on the pipeline's unlabeled pool
(``vision.data.manifest``, split ``vision.data.pretrain_split``), batches drawn as ``selfsup pretrain-ssl`` draws them
(``pool_batches``, beforehand: a row index, negligible); each timed step augments its batch and trains:

* **simclr, per image** — ``TwoViews``: torchvision's pipeline image by image on the CPU, views copied to the device;
* **simclr, batched** — ``BatchTwoViews`` on the device (``vision.pretrain.augment.batched``, the default);
* **supervised** — the same backbone + a linear head, cross-entropy on the pool's labels (read for this benchmark
  only; pretraining never reads them), one batched view of each image: the step a supervised ResNet-18 run takes.

images/s counts each pool image once (a SimCLR image is two views). Two views through the network cost about twice a
supervised step, so simclr ÷ supervised = 0.5 is the ideal of a loader that never starves the model; issue 16's
target on a GPU is >= 0.4. Rounds are interleaved (each runs every step kind for ``--steps-per-round`` steps in a
rotated order, after warm-up steps) so that load from other processes hits all alike; images/s is the median over
rounds, each ratio the median of per-round ratios. Ends with one JSON line: ``device``,
``images_per_s_simclr_per_image``, ``images_per_s_simclr_batched``, ``images_per_s_supervised``,
``ratio_batched_vs_per_image``, ``ratio_simclr_vs_supervised``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO_SIMCLR_VS_SUPERVISED = 0.4  # on a GPU (issue 16); 0.5 is the ideal


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps-per-round", type=int, default=4, help="timed steps of each kind per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 1 step, 1 warm-up step (a smoke test)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of params.yaml, e.g. preset=base")
    return parser.parse_args(argv)


class StepKind:
    """One kind of training step with its own networks and optimizer (all start from the same seed)."""

    def __init__(self, name: str, cfg, channels: int, classes: int, device: torch.device):
        from selfsup.vision.augment import two_view_augmenter
        from selfsup.vision.losses import NTXentLoss
        from selfsup.vision.model import MLPHead, backbone_for
        from selfsup.vision.ssl_common import make_optimizer

        self.name, self.cfg, self.device = name, cfg, device
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        torch.manual_seed(cfg.loop.seed)
        self.encoder = backbone_for(cfg, channels).to(device, memory_format=self.memory_format)
        if name == "supervised":
            self.head = torch.nn.Linear(self.encoder.out_dim, classes).to(device)
        else:
            self.head = MLPHead(self.encoder.out_dim, cfg.hidden_dim, cfg.projection_dim).to(device)
            self.loss_fn = NTXentLoss(cfg.temperature)
        self.optimizer = make_optimizer([self.encoder, self.head], cfg)
        augment = dataclasses.replace(cfg.augment, batched=name != "simclr, per image")
        self.augment = two_view_augmenter(augment, cfg.image_size, device, cfg.loop.seed)

    def step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
        from selfsup.runtime import autocast

        view1, view2 = (v.to(self.device, memory_format=self.memory_format) for v in self.augment(images, step))
        with autocast(self.device, self.cfg.loop.precision):
            if self.name == "supervised":
                logits = self.head(self.encoder(view1))  # [B, classes]; one view per image
                loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(self.device))
            else:
                loss = self.loss_fn(self.head(self.encoder(view1)), self.head(self.encoder(view2)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())  # a host sync, as the recipes' loss logging does


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from selfsup.config import load_config
    from selfsup.runtime import setup
    from selfsup.vision.data import load_images, load_labels
    from selfsup.vision.ssl_common import pool_batches

    if args.quick:
        args.rounds, args.steps_per_round, args.warmup = 2, 1, 1
    config = load_config(REPO / "params.yaml", args.overrides)
    vc, cfg = config.vision, config.vision.pretrain
    device = setup(dataclasses.replace(cfg.loop, device=args.device))  # threads, seeds, TF32: as pretrain-ssl
    classes = list(vc.data.classes)
    pool = load_images(Path(vc.data.manifest), vc.data.pretrain_split, vc.data.max_pretrain_images)
    labels = load_labels(Path(vc.data.manifest), vc.data.pretrain_split, classes, vc.data.max_pretrain_images)  # [N]
    batch = min(cfg.batch_size, len(pool))
    if batch < cfg.batch_size:
        print(f"the pool has {len(pool)} images: batch {batch} instead of {cfg.batch_size}")
    cfg = dataclasses.replace(cfg, batch_size=batch)
    kinds = [StepKind(name, cfg, pool.shape[1], len(classes), device)
             for name in ("simclr, per image", "simclr, batched", "supervised")]
    total_steps = args.warmup + args.rounds * args.steps_per_round
    # the same batches, in the same order, for every kind; the same seed draws the same rows of the labels
    batches = list(zip(pool_batches(pool, batch, total_steps, cfg.loop.seed),
                       pool_batches(labels, batch, total_steps, cfg.loop.seed)))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for kind in kinds:
        for step in range(args.warmup):
            kind.step(batches[step][0], batches[step][1], step + 1)
    sync()
    per_round: dict[str, list[float]] = {kind.name: [] for kind in kinds}
    for r in range(args.rounds):
        first = args.warmup + r * args.steps_per_round
        for kind in kinds[r % len(kinds):] + kinds[: r % len(kinds)]:
            sync()
            start = time.perf_counter()
            for step in range(first, first + args.steps_per_round):
                kind.step(batches[step][0], batches[step][1], step + 1)
            sync()
            per_round[kind.name].append(batch * args.steps_per_round / (time.perf_counter() - start))

    def median_ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(per_round[a], per_round[b], strict=True))

    speed = {name: statistics.median(values) for name, values in per_round.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{datetime.date.today()}, {name}, backbone {cfg.backbone} width {cfg.width}, image {cfg.image_size} px, "
          f"batch {batch}, {cfg.loop.precision}, {torch.get_num_threads()} CPU threads; "
          f"{args.rounds} rounds x {args.steps_per_round} steps")
    print(f"{'step':<22} {'images/s':>10}")
    for kind in kinds:
        print(f"{kind.name:<22} {speed[kind.name]:>10,.0f}")
    summary = {"device": name,
               "images_per_s_simclr_per_image": round(speed["simclr, per image"], 1),
               "images_per_s_simclr_batched": round(speed["simclr, batched"], 1),
               "images_per_s_supervised": round(speed["supervised"], 1),
               "ratio_batched_vs_per_image": round(median_ratio("simclr, batched", "simclr, per image"), 3),
               "ratio_simclr_vs_supervised": round(median_ratio("simclr, batched", "supervised"), 3)}
    print(f"batched ÷ per-image augmentation: {summary['ratio_batched_vs_per_image']:.2f}x; "
          f"SimCLR (batched) ÷ supervised: {summary['ratio_simclr_vs_supervised']:.2f} "
          f"(ideal 0.5; target on a GPU >= {TARGET_RATIO_SIMCLR_VS_SUPERVISED})")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
