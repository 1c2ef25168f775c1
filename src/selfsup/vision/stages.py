"""The image stages as functions of the config: what ``selfsup validate-images | pretrain-ssl | evaluate-ssl |
export-ssl`` run (the CLI only parses arguments and prints). Each reads its inputs from the paths in
``cfg.vision``, writes its outputs atomically, logs to the tracker, and returns the metrics it wrote.

    validate_stage   manifest -> artifacts/validation_images/      (Great Expectations; fails on a broken image)
    pretrain_stage   train pixels (no labels) -> models/ssl/encoder.pt, artifacts/pretrain_ssl/
    evaluate_stage   encoder + labels -> artifacts/evaluate_ssl/ (kNN, probes, supervised baseline, plots),
                     models/ssl_probe/probe.pt
    export_stage     encoder + probe -> models/onnx/image-encoder/ (ONNX, parity-checked), artifacts/export_ssl/

Registration (and the quality gate) is ``selfsup.registry.lifecycle``'s: the ``register`` stage, after every export.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from selfsup.config import Config, SSLPretrainConfig
from selfsup.fileio import replace_dir, staging_dir, write_csv, write_json


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------- validate_images


def validate_stage(cfg: Config, params_file: Path):
    """Decode and check every image of the manifest; the outcome (also when it failed), already tracked. Raises
    ``DataFileError`` / ``ImageDataError`` when the manifest cannot be read at all."""
    from selfsup.datasets.stages import track_validation
    from selfsup.vision.validate import validate_images

    outcome = validate_images(cfg)
    track_validation(cfg, params_file, outcome, "validate_images", cfg.vision.validate)
    return outcome


# ------------------------------------------------------------------------------------------------ pretrain_ssl


def pretrain_ssl(cfg: SSLPretrainConfig, pool: np.ndarray, device: torch.device, tracker,
                 checkpoint_dir: Path | None = None, ranks=None):
    """Pretrain an encoder on ``pool`` (``uint8 [N, C, H, W]``, no labels) with the recipe of ``cfg.method``;
    returns ``(encoder, SSLResult)``. Raises ``CollapseError`` when the final embeddings collapsed. With
    ``checkpoint_dir``, resumes from and writes resumable checkpoints there. ``ranks`` (``selfsup.distributed``):
    this process among the torchrun processes, inside their process group; one process when ``None``."""
    from selfsup.distributed import Ranks
    from selfsup.vision import contrastive, self_distillation

    recipe = contrastive if cfg.method in contrastive.METHODS else self_distillation
    return recipe.train(cfg, pool, device, tracker, checkpoint_dir, ranks or Ranks())


def pretrain_stage(cfg: Config, params_file: Path,
                   checkpoint_dir: Path | None = Path("checkpoints/pretrain_ssl")) -> dict:
    """Pretrain with ``vision.pretrain.method``; raises ``CollapseError`` (after logging) if the embeddings collapse.
    A run killed midway resumes from its last checkpoint in ``checkpoint_dir``. Under ``torchrun`` every process
    calls this and they train one model together (``ssl_common``); rank 0 alone tracks and writes the outputs, the
    others return the same metrics without writing them."""
    from selfsup.distributed import device_for_rank, process_group, ranks_from_env, share_cpu_threads
    from selfsup.vision.data import load_images
    from selfsup.vision.ssl_common import check_batch_splits
    from selfsup.runtime import setup
    from selfsup.tracking import NullTracker

    vc, pc = cfg.vision, cfg.vision.pretrain
    ranks = ranks_from_env()
    check_batch_splits(pc, ranks)
    device = setup(pc.loop)
    share_cpu_threads(pc.loop.threads, ranks)
    device = device_for_rank(device, ranks)
    pool = load_images(vc.data.manifest, vc.data.pretrain_split, vc.data.max_pretrain_images)
    with process_group(device, ranks):
        if ranks.is_main:
            return _pretrain_and_write(cfg, params_file, pool, device, checkpoint_dir, ranks)
        cpu_start = time.process_time()  # this process's: each rank reports its own
        _, result = pretrain_ssl(pc, pool, device, NullTracker(), checkpoint_dir, ranks)
        return _pretrain_metrics(result, len(pool), collapsed=False, cpu_seconds=time.process_time() - cpu_start)


def _pretrain_and_write(cfg: Config, params_file: Path, pool: np.ndarray, device: torch.device,
                        checkpoint_dir: Path | None, ranks) -> dict:
    """``pretrain_stage`` in one process or torchrun's rank 0: train, track, write the reports and the encoder."""
    from selfsup.vision.model import save_encoder
    from selfsup.vision.ssl_common import CollapseError
    from selfsup.tracking import open_run

    pc = cfg.vision.pretrain
    metrics_dir = Path(pc.metrics_dir)
    with open_run(cfg, "pretrain_ssl", params_file, pc) as tracker:
        tracker.set_tags({"method": pc.method, "backbone": pc.backbone})
        cpu_start = time.process_time()  # CPU seconds: comparable across machines when other jobs share the cores
        try:
            encoder, result = pretrain_ssl(pc, pool, device, tracker, checkpoint_dir, ranks)
        except CollapseError as err:
            if err.result is not None:
                _write_pretrain_reports(err.result, metrics_dir, pool_images=len(pool), collapsed=True)
            tracker.set_tags({"collapsed": "true"})
            raise
        metrics = _write_pretrain_reports(result, metrics_dir, pool_images=len(pool), collapsed=False,
                                          cpu_seconds=time.process_time() - cpu_start)
        staging = staging_dir(Path(pc.out_dir))
        save_encoder(encoder.cpu().to(memory_format=torch.contiguous_format), staging / "encoder.pt", pc.backbone,
                     pc.width, int(pool.shape[1]), {"method": pc.method, "image_size": pc.image_size}, pc.pool_grid)
        replace_dir(staging, Path(pc.out_dir))
        per_step = {"embedding_std", "effective_rank"}  # already logged as curves, step by step
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in per_step})
        tracker.log_artifact(metrics_dir)
    return metrics


def _pretrain_metrics(result, pool_images: int, collapsed: bool, cpu_seconds: float = 0.0) -> dict:
    metrics = {k: v for k, v in asdict(result).items() if k not in ("history", "monitor")}
    metrics.update(pool_images=pool_images, collapsed=int(collapsed), cpu_seconds=cpu_seconds)
    return metrics


def _write_pretrain_reports(result, metrics_dir: Path, pool_images: int, collapsed: bool,
                            cpu_seconds: float = 0.0) -> dict:
    metrics = _pretrain_metrics(result, pool_images, collapsed, cpu_seconds)
    write_json(metrics_dir / "metrics.json", metrics)
    write_csv(metrics_dir / "loss.csv", ["step", "train_loss"], [[h["step"], f"{h['loss']:.5f}"]
                                                                  for h in result.history])
    write_csv(metrics_dir / "collapse.csv", ["step", "embedding_std", "effective_rank"],
               [[m["step"], f"{m['embedding_std']:.4f}", f"{m['effective_rank']:.3f}"] for m in result.monitor])
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    left.plot([h["step"] for h in result.history], [h["loss"] for h in result.history])
    left.set(xlabel="step", ylabel="loss", title=f"{result.method} training loss")
    left.grid(alpha=0.3)
    steps = [m["step"] for m in result.monitor]
    right.plot(steps, [m["embedding_std"] for m in result.monitor], "o-", label="embedding std x sqrt(D)")
    right.set(xlabel="step", title="collapse monitor" + (" — COLLAPSED" if collapsed else ""))
    twin = right.twinx()
    twin.plot(steps, [m["effective_rank"] for m in result.monitor], "s--", color="tab:orange", label="effective rank")
    right.legend(loc="upper left")
    twin.legend(loc="lower right")
    right.grid(alpha=0.3)
    fig.savefig(metrics_dir / "curves.png", dpi=100)
    plt.close(fig)
    return metrics


# ------------------------------------------------------------------------------------------------ evaluate_ssl


def evaluate_stage(cfg: Config, params_file: Path) -> dict:
    """kNN / linear-probe accuracy of the pretrained and of a random-init encoder, and supervised-from-scratch
    accuracy, at every label fraction; plots; the 100 %-labels probe for export."""
    from selfsup.vision.data import load_images, load_labels
    from selfsup.vision.evaluate import RawPixels, predict_classes, score_frozen, stratified_subset, train_supervised
    from selfsup.vision.model import backbone_like, encoder_from
    from selfsup.runtime import setup
    from selfsup.tracking import open_run

    vc, ec = cfg.vision, cfg.vision.evaluate
    device = setup(vc.pretrain.loop)
    seed = vc.pretrain.loop.seed
    start, cpu_start = time.perf_counter(), time.process_time()
    classes = list(vc.data.classes)
    pool = load_images(vc.data.manifest, vc.data.pretrain_split, vc.data.max_eval_train_images)
    pool_labels = load_labels(vc.data.manifest, vc.data.pretrain_split, classes, vc.data.max_eval_train_images)
    held = load_images(vc.data.manifest, vc.data.eval_split, vc.data.max_eval_images)
    held_labels = load_labels(vc.data.manifest, vc.data.eval_split, classes, vc.data.max_eval_images)
    encoder_path = Path(vc.pretrain.out_dir) / "encoder.pt"
    saved = torch.load(encoder_path, map_location="cpu", weights_only=True)
    ssl_encoder = encoder_from(saved).to(device)
    torch.manual_seed(seed)  # the random-init baseline starts where pretraining started
    random_encoder = backbone_like(saved).to(device)

    timings = {"load": time.perf_counter() - start}
    ssl, probe, ssl_features = score_frozen(ssl_encoder, pool, pool_labels, held, held_labels, len(classes), ec,
                                            device, seed)
    rand, _, _ = score_frozen(random_encoder, pool, pool_labels, held, held_labels, len(classes), ec, device, seed)
    raw, _, _ = score_frozen(RawPixels(), pool, pool_labels, held, held_labels, len(classes), ec, device, seed)
    timings["frozen_encoders"] = time.perf_counter() - start - sum(timings.values())
    supervised = {}
    held_tensor = torch.from_numpy(held_labels)
    for fraction in ec.label_fractions:
        subset = stratified_subset(pool_labels, fraction, seed)
        torch.manual_seed(seed)
        model = train_supervised(backbone_like(saved),
                                 pool[subset], pool_labels[subset], len(classes), ec.supervised_steps,
                                 ec.supervised_learning_rate, ec.supervised_batch_size, vc.pretrain.image_size,
                                 device, seed)
        supervised[f"{fraction:g}"] = float((predict_classes(model, held, device) == held_tensor).float().mean())

    timings["supervised"] = time.perf_counter() - start - sum(timings.values())
    metrics = {
        "method": saved.get("method", ""),
        "held_out_images": len(held), "labelled_pool_images": len(pool),
        "ssl": {"knn_accuracy": ssl.knn, "probe_accuracy": ssl.probe},
        "random_init": {"knn_accuracy": rand.knn, "probe_accuracy": rand.probe},
        "raw_pixels": {"knn_accuracy": raw.knn, "probe_accuracy": raw.probe},
        "supervised_from_scratch": {"accuracy": supervised},
        "knn_gain_over_random_init": ssl.knn - rand.knn,
        "knn_gain_over_raw_pixels": ssl.knn - raw.knn,
        "probe_gain_over_raw_pixels": {f: ssl.probe[f] - raw.probe[f] for f in ssl.probe},
        "probe_gain_over_supervised": {f: ssl.probe[f] - supervised[f] for f in ssl.probe},
    }
    out_dir = Path(ec.out_dir)
    fractions = [f"{f:g}" for f in ec.label_fractions]
    write_csv(out_dir / "label_efficiency.csv",
              ["labels", "ssl_probe", "random_init_probe", "raw_pixels_probe", "supervised"],
              [[f, f"{ssl.probe[f]:.4f}", f"{rand.probe[f]:.4f}", f"{raw.probe[f]:.4f}", f"{supervised[f]:.4f}"]
               for f in fractions])
    _plot_label_efficiency(metrics, fractions, out_dir / "label_efficiency.png")
    if ec.tsne_images:
        _plot_tsne(ssl_features[: ec.tsne_images].numpy(), held_labels[: ec.tsne_images], classes, seed,
                   out_dir / "tsne.png")
    probe_path = Path(ec.probe_path)
    staging = staging_dir(probe_path.parent)
    torch.save({"state_dict": probe.state_dict(), "dim": probe.linear.in_features, "classes": classes},
               staging / probe_path.name)
    replace_dir(staging, probe_path.parent)
    timings["plots"] = time.perf_counter() - start - sum(timings.values())
    metrics["seconds"] = time.perf_counter() - start
    metrics["seconds_by_phase"] = timings
    metrics["cpu_seconds"] = time.process_time() - cpu_start
    write_json(out_dir / "metrics.json", metrics)
    with open_run(cfg, "evaluate_ssl", params_file, ec) as tracker:
        flat = {"ssl_knn_accuracy": ssl.knn, "random_init_knn_accuracy": rand.knn, "raw_pixels_knn_accuracy": raw.knn,
                **{f"ssl_probe_accuracy_{f}": ssl.probe[f] for f in fractions},
                **{f"random_init_probe_accuracy_{f}": rand.probe[f] for f in fractions},
                **{f"raw_pixels_probe_accuracy_{f}": raw.probe[f] for f in fractions},
                **{f"supervised_accuracy_{f}": supervised[f] for f in fractions}}
        tracker.log_metrics(flat)
        tracker.log_artifact(out_dir)
    return metrics


def _plot_label_efficiency(metrics: dict, fractions: list[str], path: Path) -> None:
    plt = _pyplot()
    x = [float(f) * 100 for f in fractions]
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    ax.plot(x, [metrics["ssl"]["probe_accuracy"][f] for f in fractions], "o-",
            label=f"{metrics['method']} encoder + linear probe")
    ax.plot(x, [metrics["random_init"]["probe_accuracy"][f] for f in fractions], "s--",
            label="random-init encoder + linear probe")
    ax.plot(x, [metrics["raw_pixels"]["probe_accuracy"][f] for f in fractions], "d-.",
            label="raw pixels + linear probe (classical)")
    ax.plot(x, [metrics["supervised_from_scratch"]["accuracy"][f] for f in fractions], "^:",
            label="supervised from scratch")
    ax.axhline(metrics["ssl"]["knn_accuracy"], color="tab:blue", alpha=0.4, label="kNN, pretrained (100 %)")
    ax.axhline(metrics["random_init"]["knn_accuracy"], color="tab:orange", alpha=0.4, label="kNN, random init")
    ax.axhline(metrics["raw_pixels"]["knn_accuracy"], color="tab:green", alpha=0.4, label="kNN, raw pixels")
    ax.set_xscale("log")
    ax.set(xlabel="labelled training images used (%)", ylabel="held-out accuracy",
           title="label efficiency (frozen encoder)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_tsne(features: np.ndarray, labels: np.ndarray, classes: list[str], seed: int, path: Path) -> None:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    points = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500,
                  random_state=seed).fit_transform(features)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), constrained_layout=True)
    for index, name in enumerate(classes):
        mask = labels == index
        ax.scatter(points[mask, 0], points[mask, 1], s=6, label=name, alpha=0.8)
    ax.set(title=f"t-SNE of {len(features)} held-out embeddings, coloured by their (unseen) labels",
           xticks=[], yticks=[])
    ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- export_ssl


def export_stage(cfg: Config, params_file: Path) -> dict:
    from selfsup.tracking import open_run
    from selfsup.vision.data import load_images
    from selfsup.vision.export import export_image_model

    vc, xc = cfg.vision, cfg.vision.export
    images = load_images(vc.data.manifest, vc.data.eval_split, xc.parity_images)
    out_dir = Path(xc.out_dir)
    result = export_image_model(Path(vc.pretrain.out_dir) / "encoder.pt", Path(vc.evaluate.probe_path), images,
                                out_dir, xc.opset, xc.max_abs_diff, xc.min_label_agreement)
    write_json(Path("artifacts/export_ssl") / "metrics.json", result)
    # registration is the `register` stage's job (selfsup.registry.lifecycle), after every export of the pipeline succeeded
    with open_run(cfg, "export_ssl", params_file, xc) as tracker:
        tracker.log_metrics({"onnx_label_agreement": result["label_agreement"],
                             "onnx_max_abs_diff": result["max_abs_diff"]})
    return result
