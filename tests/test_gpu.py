"""The CUDA paths: bf16 autocast pretraining, fine-tuning and image SSL on a GPU, and CPU/GPU agreement of the
encoder. Marked ``gpu`` and skipped, with the reason, where no CUDA device is present (``pytest -m gpu`` on a GPU
machine runs them). They read the repository's ``data/`` (``make data``), else build it from the pinned sources."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

# slow as well: on a GPU machine without data/ they build it (minutes, network), which `make test-unit` never does
pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is present)")]

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def data_dir(request) -> Path:
    if (REPO_DATA / "corpus/unlabeled.jsonl").exists():
        return REPO_DATA
    return request.getfixturevalue("built_data")


@pytest.fixture(scope="module")
def gpu_config(repo_root):
    from selfsup.config import load_config

    return load_config(repo_root / "params.yaml", [
        "preset=tiny", "tracking.enabled=false", "pretrain.loop.progress=false", "finetune.loop.progress=false",
        "pretrain.loop.device=cuda", "pretrain.loop.precision=bf16",
        "finetune.loop.device=cuda", "finetune.loop.precision=bf16"])


@pytest.fixture(scope="module")
def text_setup(data_dir, tmp_path_factory):
    """A 400-document slice of the real corpus and a WordPiece tokenizer trained on it."""
    from selfsup.text.data import read_corpus
    from selfsup.text.tokenizer import save_hf_tokenizer, train_wordpiece

    root = tmp_path_factory.mktemp("gpu_text")
    tweets = [text for source, text in read_corpus(data_dir / "corpus/unlabeled.jsonl") if source == "tweets"][:400]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"source": "tweets", "id": str(i), "text": t}) + "\n"
                              for i, t in enumerate(tweets)))
    tokenizer = train_wordpiece(tweets, vocab_size=400, min_frequency=2)
    save_hf_tokenizer(tokenizer, root / "tokenizer", model_max_length=64)
    return corpus, root / "tokenizer"


@pytest.fixture(scope="module")
def pretrained_on_gpu(gpu_config, text_setup, tmp_path_factory):
    from selfsup.text.pretrain_mlm import pretrain_mlm

    corpus, tokenizer_dir = text_setup
    root = tmp_path_factory.mktemp("gpu_mlm")
    cfg = dataclasses.replace(gpu_config.pretrain, out_dir=root / "mlm", max_steps=6, source_weights={"tweets": 1.0})
    return pretrain_mlm(cfg, corpus, tokenizer_dir, root / "ckpt"), root / "mlm"


def test_mlm_pretraining_runs_in_bf16_on_cuda_and_saves_fp32_weights(pretrained_on_gpu):
    from safetensors.torch import load_file

    result, out = pretrained_on_gpu
    assert result.steps == 6 and all(math.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"] + 1.0, "bf16 loss blew up"
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}, "autocast must not leave bf16 weights behind"


def test_finetuning_runs_in_bf16_on_cuda(gpu_config, text_setup, pretrained_on_gpu, data_dir, tmp_path):
    from selfsup.text.finetune import finetune

    _, tokenizer_dir = text_setup
    spec = gpu_config.data.tasks["intent"]
    result = finetune("intent", "pretrained", gpu_config.finetune.tasks["intent"], gpu_config.finetune.loop,
                      gpu_config.pretrain.model, data_dir / "intent", spec.labels, tokenizer_dir,
                      pretrained_on_gpu[1], tmp_path / "intent")
    assert result.train_examples == 64 and all(math.isfinite(h["loss"]) for h in result.history)
    assert 0.0 <= result.val_macro_f1 <= 1.0 and (tmp_path / "intent/model.safetensors").exists()


def test_encoder_logits_agree_between_cpu_and_cuda(gpu_config, text_setup):
    """fp32 on both devices: the same weights must give the same logits (to float tolerance). TF32 is switched
    off here: the training setup turns it on, and its 10-bit mantissa alone moves logits by ~2e-4."""
    from selfsup.text.model import masked_lm
    from selfsup.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(text_setup[1])
    torch.manual_seed(0)
    model = masked_lm(gpu_config.pretrain.model, len(tokenizer), tokenizer.pad_token_id).eval()
    batch = tokenizer(["my flight was cancelled again", "thanks for the quick help"], padding=True,
                      return_tensors="pt")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            on_cpu = model(**batch).logits
            on_gpu = model.to("cuda")(**{k: v.to("cuda") for k, v in batch.items()}).logits.cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert torch.allclose(on_cpu, on_gpu, atol=1e-4, rtol=1e-3), (on_cpu - on_gpu).abs().max()


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_image_ssl_runs_in_bf16_channels_last_on_cuda(method, data_dir):
    from selfsup.config import SSLPretrainConfig
    from selfsup.vision.data import load_images
    from selfsup.vision.stages import pretrain_ssl
    from selfsup.tracking import NullTracker

    pool = load_images(data_dir / "images/manifest.csv", "train", limit=256)
    cfg = SSLPretrainConfig(method=method, backbone="resnet18", hidden_dim=64, projection_dim=32, batch_size=64,
                            max_steps=3, warmup_steps=1, dino_out_dim=64, monitor_every=3, monitor_images=128,
                            min_embedding_std=0.0, min_effective_rank=0.0, channels_last=True)
    cfg.loop.precision, cfg.loop.progress = "bf16", False
    encoder, result = pretrain_ssl(cfg, pool, torch.device("cuda"), NullTracker())
    assert result.steps == 3 and np.isfinite([h["loss"] for h in result.history]).all()
    assert next(encoder.parameters()).dtype == torch.float32


def test_batched_augmentation_runs_on_the_gpu_and_keeps_the_pixels_when_off():
    """The views are made on the GPU (no copy back to the CPU); with every transform off they are the pixels."""
    from selfsup.config import AugmentConfig
    from selfsup.vision.augment import two_view_augmenter

    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    views = two_view_augmenter(AugmentConfig(blur_p=0.5, erase_p=0.5), 28, torch.device("cuda"), seed=1)(images, 1)
    assert all(v.is_cuda and v.shape == (32, 1, 28, 28) for v in views)
    off = AugmentConfig(crop_scale=[1.0, 1.0], flip_p=0.0, jitter_p=0.0)
    same, _ = two_view_augmenter(off, 28, torch.device("cuda"), seed=1)(images, 1)
    assert torch.allclose(same.cpu(), images.float() / 255, atol=1e-5)
