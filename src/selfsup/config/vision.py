"""The image pipeline's sections, all under ``vision:`` in params.yaml (data, validate, pretrain, evaluate,
export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup.config.base import TrainLoopConfig, _check, option

SSL_METHODS = ("simclr", "moco", "byol", "simsiam", "dino")
BACKBONES = ("convnet", "resnet18")


@dataclass
class VisionDataConfig:
    """The image data: a manifest (split,file,member,label) beside the image shards it names."""

    manifest: Path = option(Path("data/images/manifest.csv"), help="image manifest; shards are found beside it")
    classes: list[str] = option(
        default_factory=lambda: ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                                 "bag", "ankle_boot"],
        help="the declared class names (evaluation labels; Fashion-MNIST's by default)", min_items=2, unique=True)
    pretrain_split: str = option("train", help="the unlabeled pool pretraining reads (pixels only, no labels)")
    eval_split: str = option("test", help="the held-out split kNN / linear-probe accuracy is reported on")
    max_pretrain_images: int = option(0, help="use only the first N pool images for pretraining (0 = all)", ge=0)
    max_eval_train_images: int = option(0, help="labelled pool images for the kNN bank / probes (0 = all)", ge=0)
    max_eval_images: int = option(0, help="held-out images to evaluate on (0 = all)", ge=0)

    def check(self, path: str) -> None:
        _check(self.pretrain_split != self.eval_split, f"{path}.eval_split", "must differ from pretrain_split")


@dataclass
class ImageRules:
    """The ``validate_images`` stage: what every image in the manifest must satisfy."""

    report_dir: Path = option(Path("artifacts/validation_images"), help="summary, GE results and HTML report")
    max_failures_shown: int = option(10, help="failing rows named per run in the error message", ge=1)
    modes: list[str] = option(default_factory=lambda: ["L"], help="allowed PIL modes (L = 8-bit grayscale)",
                              nonempty=True)
    min_side: int = option(8, help="smallest allowed width/height in pixels", ge=1)
    max_side: int = option(1024, help="largest allowed width/height in pixels")
    min_bytes: int = option(67, help="smallest plausible file size (the smallest valid PNG is 67 bytes)")

    def check(self, path: str) -> None:
        _check(self.min_side <= self.max_side, f"{path}.max_side", f"must be >= min_side ({self.min_side})")


@dataclass
class AugmentConfig:
    """The two-view augmentation (torchvision.transforms.v2), applied independently to each view."""

    crop_scale: list[float] = option(default_factory=lambda: [0.25, 1.0], min_items=2, max_items=2, gt=0, le=1,
                                     help="RandomResizedCrop area range: low, high")
    flip_p: float = option(0.5, help="probability of a horizontal flip", ge=0, le=1)
    jitter_p: float = option(0.8, help="probability of colour jitter", ge=0, le=1)
    brightness: float = option(0.4, help="colour-jitter brightness strength")
    contrast: float = option(0.4, help="colour-jitter contrast strength")
    saturation: float = option(0.0, help="colour-jitter saturation strength (0 for grayscale data)")
    hue: float = option(0.0, help="colour-jitter hue strength (0 for grayscale data)")
    grayscale_p: float = option(0.0, help="probability of converting to grayscale (RGB data)", ge=0, le=1)
    blur_p: float = option(0.0, help="probability of Gaussian blur (cheap to skip at 28 px)", ge=0, le=1)
    blur_sigma: list[float] = option(default_factory=lambda: [0.1, 2.0], min_items=2, max_items=2, gt=0,
                                     help="Gaussian blur sigma range: low, high")
    solarize_p: float = option(0.0, help="probability of solarizing the *second* view (BYOL/DINO use 0.2)", ge=0,
                               le=1)
    erase_p: float = option(0.0, help="probability of random erasing (a cutout)", ge=0, le=1)
    batched: bool = option(True, help="augment whole batches on the training device (selfsup.vision.batch_augment); "
                           "false: image by image with torchvision on the CPU (the only way to hue jitter)")

    def check(self, path: str) -> None:
        for name in ("crop_scale", "blur_sigma"):
            low, high = getattr(self, name)
            _check(low <= high, f"{path}.{name}", f"must be [low, high] with low <= high, got {[low, high]}")
        _check(not (self.batched and self.hue > 0), f"{path}.hue",
               "hue jitter is not available with batched augmentation; set it to 0 or batched: false")


@dataclass
class SSLPretrainConfig:
    """The ``pretrain_ssl`` stage: self-supervised pretraining of an image encoder with one method."""

    method: str = option("simclr", help="the self-supervised method", choices=SSL_METHODS)
    backbone: str = option("convnet", help="convnet (small CPU CNN) | resnet18 (CIFAR-style stem for small images)",
                           choices=BACKBONES)
    width: int = option(32, help="channels of the first convnet stage (doubled per stage); resnet18 ignores it", ge=1)
    pool_grid: int = option(1, help="the representation: the last feature map average-pooled to a grid x grid "
                                    "(1: global average pool); the representation has channels x grid**2 values",
                            ge=1)
    image_size: int = option(28, help="side of the augmented crops fed to the encoder", ge=1)
    projection_dim: int = option(128, help="output size of the projection head", ge=1)
    hidden_dim: int = option(512, help="hidden size of the projection/prediction MLPs", ge=1)
    loop: TrainLoopConfig = option(default_factory=TrainLoopConfig, help="device, precision, seed")
    channels_last: bool = option(False, help="channels_last memory format (faster convolutions on GPU)")
    augment: AugmentConfig = option(default_factory=AugmentConfig, help="the two-view augmentation")
    # contrastive losses contrast each image with at least one other of its batch
    batch_size: int = option(256, help="images per step (each seen as two views)", ge=2)
    max_steps: int = option(300, help="optimizer steps", ge=1)
    learning_rate: float = option(2e-3, help="peak AdamW learning rate (after warm-up, cosine decay to 0)", gt=0)
    warmup_steps: int = option(20, help="linear warm-up steps", ge=0)
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    temperature: float = option(0.2, help="softmax temperature of NT-Xent / InfoNCE (simclr, moco)", gt=0)
    queue_size: int = option(4096, help="moco: negatives kept in the queue (a multiple of batch_size)")
    momentum: float = option(0.99, ge=0, lt=1,
                             help="moco/byol/dino: EMA momentum of the target/teacher (cosine to 1 for byol/dino)")
    dino_out_dim: int = option(1024, help="dino: prototypes in the DINO head", ge=1)
    teacher_temperature: float = option(0.04, help="dino: teacher softmax temperature (sharpening)", gt=0)
    student_temperature: float = option(0.1, help="dino: student softmax temperature", gt=0)
    center_momentum: float = option(0.9, help="dino: EMA momentum of the teacher-output center", ge=0, lt=1)
    monitor_every: int = option(50, help="compute the collapse monitor every N steps (and at the end)", ge=1)
    monitor_images: int = option(1024, help="pool images the collapse monitor embeds", ge=1)
    checkpoint_every: int = option(50, help="save a resumable checkpoint every N steps", ge=1)
    min_embedding_std: float = option(0.1, help="fail below this std of L2-normalised embeddings x sqrt(dim) "
                                      "(1 = spread evenly, 0 = collapsed to one point)", ge=0)
    min_effective_rank: float = option(2.0, help="fail below this effective rank of the embedding matrix", ge=0)
    out_dir: Path = option(Path("models/ssl"), help="the pretrained encoder (encoder.pt + config)")
    metrics_dir: Path = option(Path("artifacts/pretrain_ssl"), help="metrics.json, history.csv, curves")

    def check(self, path: str) -> None:
        _check(self.warmup_steps < self.max_steps, f"{path}.warmup_steps", f"must be < max_steps ({self.max_steps})")
        _check(self.queue_size >= self.batch_size and self.queue_size % self.batch_size == 0, f"{path}.queue_size",
               f"must be a multiple of batch_size ({self.batch_size}), got {self.queue_size}")


@dataclass
class SSLEvaluateConfig:
    """The ``evaluate_ssl`` stage: frozen-encoder kNN and linear probes vs random init and supervised training."""

    knn_k: int = option(20, help="neighbours voting in kNN classification", ge=1)
    knn_temperature: float = option(0.07, help="kNN vote weight exp(cosine / T)", gt=0)
    label_fractions: list[float] = option(default_factory=lambda: [0.01, 0.1, 1.0],
                                          help="shares of the labelled pool used for probes and supervised baselines "
                                               "(1.0 trains the exported probe)", nonempty=True, gt=0, le=1,
                                          contains=1.0)
    probe_epochs: int = option(30, help="linear-probe epochs (full-batch-free AdamW on cached features)", ge=1)
    probe_learning_rate: float = option(1e-2, help="linear-probe learning rate", gt=0)
    supervised_steps: int = option(300, help="optimizer steps of the supervised-from-scratch baseline per fraction",
                                   ge=1)
    supervised_batch_size: int = option(64, help="images per step of the supervised-from-scratch baseline", ge=1)
    supervised_learning_rate: float = option(2e-3, help="supervised baseline peak AdamW learning rate", gt=0)
    tsne_images: int = option(1500, help="held-out images in the 2-D t-SNE plot (0 = no plot)")
    out_dir: Path = option(Path("artifacts/evaluate_ssl"), help="metrics.json, plots and the probe")
    probe_path: Path = option(Path("models/ssl_probe/probe.pt"), help="the 100%-labels linear probe (for export)")


@dataclass
class SSLExportConfig:
    """The ``export_ssl`` stage: encoder + probe to ONNX, parity-checked, registered."""

    out_dir: Path = option(Path("models/onnx/image-encoder"), help="model.onnx, classes.json, export.json")
    opset: int = option(18, help="ONNX opset")
    max_abs_diff: float = option(1e-3, help="fail if any embedding or logit differs from PyTorch by more", gt=0)
    min_label_agreement: float = option(0.999, help="fail if fewer held-out predictions agree with PyTorch", gt=0, le=1)
    parity_images: int = option(1000, help="held-out images the parity check scores", ge=1)
    registered_model: str = option("selfsup-image-encoder", help="MLflow registered model name (the task "
                                                             "`image-encoder` of `selfsup registry`)")


@dataclass
class VisionConfig:
    """The image pipeline: validate_images -> pretrain_ssl -> evaluate_ssl -> export_ssl."""

    data: VisionDataConfig = option(default_factory=VisionDataConfig, help="the image data")
    validate: ImageRules = option(default_factory=ImageRules, help="the validate_images stage")
    pretrain: SSLPretrainConfig = option(default_factory=SSLPretrainConfig, help="the pretrain_ssl stage")
    evaluate: SSLEvaluateConfig = option(default_factory=SSLEvaluateConfig, help="the evaluate_ssl stage")
    export: SSLExportConfig = option(default_factory=SSLExportConfig, help="the export_ssl stage")

    def check(self, path: str) -> None:
        # the pool's real size is checked when the stage starts (selfsup.config.preflight)
        limit = self.data.max_pretrain_images
        _check(not limit or self.pretrain.batch_size <= limit, f"{path}.pretrain.batch_size",
               f"must be <= data.max_pretrain_images ({limit}): a batch larger than the data, "
               f"got {self.pretrain.batch_size}")
