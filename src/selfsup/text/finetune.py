"""Sequence-classification fine-tuning, read top to bottom — from the pretrained encoder or from scratch.

    train.csv [--cut long texts into pieces (chunk_words > 0), each with its text's label]
      --tokenizer (truncate to max_length)--> length-grouped batches (dynamic padding)
      --> encoder + mean pooling + linear head [B, n_labels] --cross-entropy--> AdamW, warm-up then linear decay
    after every epoch (or every ``validate_every``-th and the last): accuracy / macro-F1 on validation.csv (a text
    read in pieces: the mean of its pieces' log-probabilities); the best validated epoch (macro-F1) is kept and saved.

The same function trains the baseline: ``init="scratch"`` builds the same architecture from the config with random
weights, so the two results differ only by what pretraining learned.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from selfsup.config import FinetuneTaskConfig, ModelConfig, TrainLoopConfig
from selfsup.text.chunking import split_texts
from selfsup.text.data import cap_stratified, read_labelled
from selfsup.fileio import replace_dir, staging_dir
from selfsup.metrics import classification_scores
from selfsup.text.model import (INITS, classifier_from_pretrained, classifier_from_scratch, collate, encode,
                                 predict_logits, save_model)
from selfsup.text.tokenizer import load_tokenizer
from selfsup.runtime import autocast, progress_bar, setup
from selfsup.tracking import NullTracker, Tracker

@dataclass
class FinetuneResult:
    init: str
    best_epoch: int
    val_accuracy: float
    val_macro_f1: float
    train_examples: int  # labelled texts (with ``extra``)
    wall_seconds: float
    train_pieces: int = 0  # training sequences: train_examples, or their pieces when chunk_words > 0
    history: list[dict] = field(default_factory=list)  # per step: step, epoch, loss
    epochs: list[dict] = field(default_factory=list)  # per epoch: epoch, val_accuracy, val_macro_f1, val_loss


def run_epochs(full_examples: int, examples: int, batch_size: int, epochs: int, max_steps: int) -> int:
    """Epochs for a run on ``examples`` so that it gets the committed setting's optimizer steps (``epochs`` passes
    over ``full_examples``), at most ``max_steps`` (0: no cap) and at least one epoch."""
    budget = epochs * math.ceil(full_examples / batch_size)
    if max_steps:
        budget = min(budget, max_steps)
    return max(1, round(budget / math.ceil(examples / batch_size)))


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples, so dynamic padding wastes little: shuffle, sort each window of
    50 batches by length, cut, shuffle the batches (HF's ``group_by_length`` idea)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def finetune(task: str, init: str, cfg: FinetuneTaskConfig, loop: TrainLoopConfig, model_cfg: ModelConfig,
             data_dir: Path, labels: list[str], tokenizer_dir: Path, pretrained_dir: Path | None, out_dir: Path,
             tracker: Tracker | None = None,
             extra: tuple[list[str], list[str]] | None = None) -> FinetuneResult:
    """Fine-tune one classifier and save its best epoch (HF format) to ``out_dir``.

    ``extra``: more ``(texts, labels)`` added to the (capped) training set, e.g. pseudo-labelled unlabeled texts
    (``selfsup.text.self_training``); validation is always on the real labels only."""
    from transformers import get_linear_schedule_with_warmup

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    tracker = tracker or NullTracker()
    device = setup(loop)
    tokenizer = load_tokenizer(tokenizer_dir)
    label_id = {label: i for i, label in enumerate(labels)}

    texts, y = read_labelled(data_dir / "train.csv")
    texts, y = cap_stratified(texts, y, cfg.max_train_examples, loop.seed)
    if extra is not None:
        texts, y = texts + list(extra[0]), y + list(extra[1])
    val_texts, val_y = read_labelled(data_dir / "validation.csv")
    # a long text is read in pieces at prediction time, so every piece is a training example with its text's label
    pieces, owner = split_texts(texts, cfg.chunk_words, cfg.max_chunks)
    train_ids = encode(tokenizer, pieces, cfg.max_length)
    train_targets = torch.tensor([label_id[y[i]] for i in owner])
    val_targets = [label_id[label] for label in val_y]

    if init == "pretrained":
        model = classifier_from_pretrained(pretrained_dir, labels)
        lr = cfg.learning_rate
    else:
        model = classifier_from_scratch(model_cfg, len(tokenizer), tokenizer.pad_token_id, labels)
        lr = cfg.scratch_learning_rate
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(train_ids) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * cfg.warmup_ratio), total)

    rng = random.Random(loop.seed)
    lengths = [len(ids) for ids in train_ids]
    history, epochs, best_state, best = [], [], None, (-1.0, 0)
    start = time.perf_counter()
    step = 0
    progress = progress_bar(total, f"finetune {task} ({init})", loop.progress)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for batch in length_grouped_batches(lengths, cfg.batch_size, rng):
            input_ids, mask = collate([train_ids[i] for i in batch], tokenizer.pad_token_id)
            with autocast(device, loop.precision):
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # [B, C]
            loss = torch.nn.functional.cross_entropy(logits.float(), train_targets[batch].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            history.append({"step": step, "epoch": epoch, "loss": loss.item()})
            tracker.log_metrics({f"{init}.train_loss": loss.item()}, step=step)
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            progress.update(1)

        if epoch % cfg.validate_every and epoch != cfg.epochs:
            continue
        val_logits = predict_logits(model, tokenizer, val_texts, cfg.max_length, device, loop.precision,
                                    chunk_words=cfg.chunk_words, max_chunks=cfg.max_chunks)
        val_loss = torch.nn.functional.cross_entropy(val_logits, torch.tensor(val_targets)).item()
        scores = classification_scores(val_targets, val_logits.argmax(-1).tolist())
        epochs.append({"epoch": epoch, "step": step, "val_loss": val_loss, **{f"val_{k}": v for k, v in scores.items()}})
        tracker.log_metrics({f"{init}.val_loss": val_loss, f"{init}.val_accuracy": scores["accuracy"],
                             f"{init}.val_macro_f1": scores["macro_f1"]}, step=step)
        progress.write(f"{task} ({init}) epoch {epoch}: val accuracy {scores['accuracy']:.3f}, "
                       f"macro-F1 {scores['macro_f1']:.3f}, loss {val_loss:.3f}")
        if scores["macro_f1"] > best[0]:
            best = (scores["macro_f1"], len(epochs) - 1)
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    progress.close()

    model.load_state_dict(best_state)
    tmp = staging_dir(out_dir)
    save_model(model, tokenizer, tmp)
    best_epoch = epochs[best[1]]
    result = FinetuneResult(init=init, best_epoch=best_epoch["epoch"], val_accuracy=best_epoch["val_accuracy"],
                            val_macro_f1=best_epoch["val_macro_f1"], train_examples=len(texts),
                            wall_seconds=time.perf_counter() - start, train_pieces=len(train_ids), history=history,
                            epochs=epochs)
    (tmp / "training.json").write_text(json.dumps(asdict(result), indent=1))
    replace_dir(tmp, out_dir)
    return result
