"""Does self-training pay? The pretrained arm fine-tuned on the labels alone against the same arm self-trained on
pseudo-labelled unlabeled in-domain texts (``selfsup.text.self_training``), several seeds, on validation (what a
setting is chosen on) and test (reported, not chosen on).

Needs the pipeline's tokenizer and pretrained encoder (``make run``); writes nothing into the pipeline's outputs.

    python benchmarks/self_training.py [key=value overrides] --task intent [--seeds 1 2 3] [--fraction F] [--quick]

(overrides go first: --seeds takes every number after it)

Self-training settings come from ``finetune.tasks.<task>.self_training``, the labeler and the pool included
(intent: the classical arm on unlabeled corpus tweets; sentiment: the classical arm on the training tweets beyond the
6,000-label cap, labels ignored; overrides welcome, e.g. ``finetune.tasks.intent.self_training.labeler=model``); it
is switched on here whatever ``enabled`` says.
``--fraction F``: the teacher learns from that share of the training labels (a stratified sample per seed) with the
label-efficiency grid's step budget (``selfsup.text.label_efficiency.share_settings``), and the student gets the same
number of optimizer steps over labels + pseudo-labels; without it, both train the committed epochs.
Ends with one JSON line: mean validation / test macro-F1 of both and the mean gain.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--fraction", type=float, default=None, help="share of the training labels (0, 1]")
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch, a 200-text pool: a smoke test")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides")
    args = parser.parse_args()

    import numpy as np
    import torch

    from selfsup.config import load_config
    from selfsup.metrics import classification_scores
    from selfsup.text.data import read_labelled
    from selfsup.text.model import load_classifier, predict_logits
    from selfsup.text.self_training import self_train
    from selfsup.text.tokenizer import load_tokenizer

    cfg = load_config(args.params, [*args.overrides, "finetune.loop.progress=false"])
    spec, task_cfg = cfg.data.tasks[args.task], cfg.finetune.tasks[args.task]
    st = dataclasses.replace(task_cfg.self_training, enabled=True)
    if args.quick:
        args.seeds, task_cfg, st = args.seeds[:1], dataclasses.replace(task_cfg, epochs=1), \
            dataclasses.replace(st, max_pool=200)
    student_cfg = None
    if args.fraction is not None:
        from selfsup.text.label_efficiency import share_settings

        if not 0 < args.fraction <= 1:
            parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
        full = len(read_labelled(Path(spec.dir) / "train.csv")[0])
        full = min(task_cfg.max_train_examples or full, full)
        labelled = max(len(spec.labels), round(full * args.fraction))
        max_steps = 1 if args.quick else 0  # --quick: one epoch (a run gets at least one)
        committed = task_cfg
        task_cfg = share_settings(committed, full, labelled, max_steps)
        student_cfg = lambda examples: share_settings(committed, full, examples, max_steps, labelled)  # noqa: E731
    texts, gold = read_labelled(Path(spec.dir) / "test.csv")
    label_id = {label: i for i, label in enumerate(spec.labels)}
    y_true = [label_id[g] for g in gold]
    tokenizer = load_tokenizer(Path(cfg.tokenizer.out_dir))

    def test_f1(folder: Path) -> float:
        logits = predict_logits(load_classifier(folder), tokenizer, texts, task_cfg.max_length, torch.device("cpu"))
        return classification_scores(y_true, logits.argmax(-1).tolist())["macro_f1"]

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            loop = dataclasses.replace(cfg.finetune.loop, seed=seed)
            # the teacher is the plain fine-tuning run (labels only, same seed): kept for the comparison
            kept, report = self_train(args.task, task_cfg, st, loop, cfg.pretrain.model, Path(spec.dir), spec.labels,
                                      Path(cfg.data.corpus), Path(cfg.tokenizer.out_dir), Path(cfg.pretrain.out_dir),
                                      Path(scratch) / f"self{seed}", teacher_copy=Path(scratch) / f"plain{seed}",
                                      student_cfg=student_cfg, classical=cfg.finetune.classical)
            row = {"seed": seed, "plain_val": report["teacher_val_macro_f1"],
                   "plain_test": test_f1(Path(scratch) / f"plain{seed}"),
                   "student_val": report["student_val_macro_f1"], "chosen": report["chosen"],
                   "chosen_val": kept.val_macro_f1, "chosen_test": test_f1(Path(scratch) / f"self{seed}"),
                   "pseudo_labels": report["pseudo_labels"]}
            rows.append(row)
            print(json.dumps(row), flush=True)

    share = f"{args.fraction:.0%} of the labels ({task_cfg.max_train_examples:,}), same steps for the student" \
        if args.fraction is not None else "all labels"
    print(f"\n{datetime.date.today()}, CPU {platform.processor() or platform.machine()}; task {args.task}, {share}; "
          f"confidence {st.confidence}, max_per_class {st.max_per_class}, pool {st.max_pool}")
    print("| seed | plain val | student val | kept | kept val | plain test | kept test | pseudo-labels |\n"
          "|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['plain_val']:.3f} | {r['student_val']:.3f} | {r['chosen']} | {r['chosen_val']:.3f} "
              f"| {r['plain_test']:.3f} | {r['chosen_test']:.3f} | {r['pseudo_labels']:,} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("plain_val", "student_val", "chosen_val", "plain_test",
                                                               "chosen_test")}
    print(json.dumps({**{k: round(v, 4) for k, v in mean.items()},
                      "val_gain": round(mean["chosen_val"] - mean["plain_val"], 4),
                      "test_gain": round(mean["chosen_test"] - mean["plain_test"], 4)}))


if __name__ == "__main__":
    main()
