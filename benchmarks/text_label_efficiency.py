"""Label efficiency on text, the full grid: pretrained vs from scratch vs classical (TF-IDF + linear model) at 1 %,
10 % and 100 % of the training labels, several seeds, mean ± std and error ratios.

The same code as the pipeline's ``label_efficiency`` stage (``selfsup.text.label_efficiency``), with the grid the
default run leaves out: every share, three seeds, and no cap on the optimizer steps (each share gets the committed
setting's steps). Needs the pipeline's tokenizer and pretrained encoder (``make run``); writes nothing into the
pipeline's outputs, only ``--out`` (default ``benchmarks/out/label_efficiency``).

    python benchmarks/text_label_efficiency.py [key=value overrides] [--tasks intent sentiment topic] [--quick]

(overrides go first: --tasks, --fractions and --seeds take every value after them)

``--quick``: one seed, 10 % and 100 %, at most 50 steps per run (a smoke test, not a measurement).
Ends with one JSON line: per task and share, each arm's mean macro-F1 and both error ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every task under finetune.tasks")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-steps", type=int, default=0, help="cap on optimizer steps per run (0: none)")
    parser.add_argument("--quick", action="store_true", help="one seed, 10 %% and 100 %%, 50 steps: a smoke test")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/label_efficiency"))
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. preset=tiny")
    args = parser.parse_args()
    if args.quick:
        args.fractions, args.seeds, args.max_steps = [0.1, 1.0], [1], 50

    import torch

    from selfsup.config import load_config
    from selfsup.fileio import write_csv, write_json
    from selfsup.text.label_efficiency import ARMS, measure, plot, summarize

    cfg = load_config(args.params, [*args.overrides, "finetune.loop.progress=false"])
    tasks = args.tasks or list(cfg.finetune.tasks)
    rows = measure(cfg, tasks, args.fractions, args.seeds, args.max_steps, log=lambda line: print(line, flush=True))
    summary = summarize(rows)
    write_csv(args.out / "runs.csv", list(rows[0]), [list(r.values()) for r in rows])
    write_json(args.out / "summary.json", summary)
    plot(summary, args.out / "label_efficiency.png")

    print(f"\n{datetime.date.today()}, CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} "
          f"threads); seeds {args.seeds}; step cap {args.max_steps or 'none'}; test macro-F1 mean ± std")
    print("| task | labels | pretrained | scratch | classical | errors scratch ÷ pretrained | errors classical ÷ "
          "pretrained |\n|---|---:|---:|---:|---:|---:|---:|")
    for task, shares in summary.items():
        for share, e in shares.items():
            print(f"| {task} | {float(share):.0%} ({e['labels']:,}) | " +
                  " | ".join(f"{e[arm]['mean']:.3f} ± {e[arm]['std']:.3f}" for arm in ARMS) +
                  f" | {e['error_ratio_scratch']:.2f} | {e['error_ratio_classical']:.2f} |")
    print(json.dumps({task: {share: {**{arm: round(e[arm]["mean"], 4) for arm in ARMS},
                                     "error_ratio_scratch": round(e["error_ratio_scratch"], 3),
                                     "error_ratio_classical": round(e["error_ratio_classical"], 3)}
                             for share, e in shares.items()} for task, shares in summary.items()}))


if __name__ == "__main__":
    main()
