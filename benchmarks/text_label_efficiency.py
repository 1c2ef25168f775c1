"""Label efficiency on text: the pretrained encoder against the same model from scratch, at several label counts.

For each label count both arms fine-tune with the task's ``params.yaml`` settings on a stratified sample of that size
(``selfsup.text.finetune``), are scored on the whole test split, and the macro-F1 gain is printed. The number of
optimizer steps is held at what the committed setting uses (``epochs`` x full batches of ``max_train_examples``), so
a smaller label set is seen for more epochs rather than trained less. Needs the pipeline's tokenizer and pretrained
encoder (``dvc repro finetune@<task>`` or ``make run``); writes nothing into the pipeline's outputs.

    python benchmarks/text_label_efficiency.py --task sentiment [key=value overrides] --labels 500 1500 6000

(overrides go before ``--labels``, which takes every number after it)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import platform
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--labels", type=int, nargs="+", default=[500, 1500, 6000],
                        help="labelled training examples per run (stratified samples of train.csv)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. finetune.loop.seed=99")
    args = parser.parse_args()

    from selfsup.config import load_config
    from selfsup.text.data import read_labelled
    from selfsup.text.model import load_classifier
    from selfsup.text.tokenizer import load_tokenizer
    from selfsup.metrics import classification_scores
    from selfsup.text.finetune import finetune
    from selfsup.text.model import INITS, predict_logits

    cfg = load_config(args.params, args.overrides)
    spec, task_cfg = cfg.data.tasks[args.task], cfg.finetune.tasks[args.task]
    loop = dataclasses.replace(cfg.finetune.loop, progress=False)
    tokenizer = load_tokenizer(Path(cfg.tokenizer.out_dir))
    available = len(read_labelled(Path(spec.dir) / "train.csv")[0])
    reference = task_cfg.max_train_examples or available
    budget = task_cfg.epochs * math.ceil(reference / task_cfg.batch_size)  # optimizer steps of the committed setting
    texts, gold = read_labelled(Path(spec.dir) / "test.csv")
    label_id = {label: i for i, label in enumerate(spec.labels)}
    y_true = [label_id[g] for g in gold]

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.labels:
            n = min(n, available)
            epochs = max(1, round(budget / math.ceil(n / task_cfg.batch_size)))
            run_cfg = dataclasses.replace(task_cfg, max_train_examples=n, epochs=epochs)
            scores = {}
            for init in INITS:
                out = Path(scratch) / f"{n}-{init}"
                finetune(args.task, init, run_cfg, loop, cfg.pretrain.model, Path(spec.dir), spec.labels,
                         Path(cfg.tokenizer.out_dir), Path(cfg.pretrain.out_dir), out)
                logits = predict_logits(load_classifier(out), tokenizer, texts, task_cfg.max_length, torch.device("cpu"))
                scores[init] = classification_scores(y_true, logits.argmax(-1).tolist())["macro_f1"]
            rows.append((n, epochs, scores["pretrained"], scores["scratch"]))
            print(f"{args.task}: {n:6,} labels x {epochs:3} epochs: test macro-F1 pretrained {scores['pretrained']:.3f}, "
                  f"from scratch {scores['scratch']:.3f}, gain {scores['pretrained'] - scores['scratch']:+.3f}",
                  flush=True)

    print(f"\n{datetime.date.today()} on CPU ({torch.get_num_threads()} threads, {platform.machine()}); task {args.task}, "
          f"{len(texts):,} test examples, ~{budget} optimizer steps per run, seed {loop.seed}")
    print("| labelled examples | epochs | pretrained macro-F1 | from scratch | gain |\n|---:|---:|---:|---:|---:|")
    for n, epochs, pre, scr in rows:
        print(f"| {n:,} | {epochs} | {pre:.3f} | {scr:.3f} | {pre - scr:+.3f} |")


if __name__ == "__main__":
    main()
