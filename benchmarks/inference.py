"""CPU inference of the fine-tuned text classifier: PyTorch eager FP32 against onnxruntime FP32 and INT8, in one run.

    python benchmarks/inference.py [--task intent] [--rounds 5] [--threads N] [--extra] [--quick] [overrides]

Same checkpoint (the pipeline's fine-tuned ``pretrained`` classifier of the task, ``models/finetune/<task>``), same
texts (the task's test split, in file order), same token ids and padding, same thread count for every variant:

* PyTorch eager, FP32 (``torch.inference_mode``);
* onnxruntime FP32: the torch.export graph as exported, and with onnxruntime's fused kernels (``export.ort_fusion``);
* onnxruntime dynamic INT8 (``selfsup.text.export.quantize_int8``): of the plain graph, quantized then fused (what the
  export stage builds) and, for comparison, fused then quantized; ``--extra`` adds per-channel and reduce-range
  INT8 variants.

Every graph is built here from the checkpoint with the export stage's own functions. Texts are grouped in file
order into batches of 1, 8 and 64 (padded to the longest in the batch), tokenized outside the timing. Rounds are
interleaved (each round runs every variant over all texts, in a rotated order) so that load from other processes
hits every variant alike; texts/s is the median over rounds and each speed-up is the median of the per-round ratios
to PyTorch; p50 / p99 are per session call, over all rounds. onnxruntime runs with the service's session options
(``selfsup.serve.runtime.session_options``: ``threads`` intra-op threads, no spinning); with more than one thread
the served FP32 and INT8 graphs get a second row, "as served": like the service, a call of at most
``SINGLE_THREAD_MAX_TOKENS`` padded tokens runs on a one-thread session (a lone short text), and the targets are
read from that row. Accuracy and macro-F1 on the test labels and label agreement with PyTorch come from batch-64
predictions. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 8, 64)
# issue 16's targets on 2 CPU cores: speed-up over PyTorch eager FP32 at batch 1 and 64, accuracy drop in points
TARGETS = {"ratio_ort_fp32_b1": 2.5, "ratio_ort_fp32_b64": 1.3, "ratio_ort_int8_b1": 3.5, "ratio_ort_int8_b64": 2.5}
MAX_ACCURACY_DROP_PT = 0.5


def cpu_name() -> str:
    """The CPU model as lscpu names it (/proc/cpuinfo's "model name"), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def build_graphs(model, max_length: int, opset: int, folder: Path, extra: bool) -> dict[str, Path]:
    """The ONNX variants of ``model`` in ``folder``, by display name, built with the export stage's functions."""
    from selfsup.text.export import export_onnx, fuse_for_onnxruntime, quantize_int8

    def fused_copy(src: Path, name: str) -> Path:
        shutil.copy(src, folder / name)
        fuse_for_onnxruntime(folder / name)
        return folder / name

    plain = folder / "fp32.onnx"
    export_onnx(model, plain, max_length, opset)
    graphs = {"ort fp32": plain, "ort fp32 fused": fused_copy(plain, "fp32_fused.onnx")}
    quantize_int8(plain, folder / "int8.onnx")
    graphs["ort int8"] = folder / "int8.onnx"
    graphs["ort int8 fused"] = fused_copy(folder / "int8.onnx", "int8_fused.onnx")  # as the export stage builds it
    quantize_int8(graphs["ort fp32 fused"], folder / "fused_int8.onnx")
    graphs["ort int8 fused first"] = folder / "fused_int8.onnx"  # fusion first: Q/K/V projections stay FP32
    if extra:
        quantize_int8(plain, folder / "int8_pc.onnx", per_channel=True)
        graphs["ort int8 fused per-channel"] = fused_copy(folder / "int8_pc.onnx", "int8_pc_fused.onnx")
        quantize_int8(plain, folder / "int8_rr.onnx", reduce_range=True)
        graphs["ort int8 fused reduce-range"] = fused_copy(folder / "int8_rr.onnx", "int8_rr_fused.onnx")
    return graphs


def batches(token_ids: list[list[int]], size: int, pad_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask) int64 [B, L] per batch of ``size`` consecutive texts, padded to the longest."""
    out = []
    for start in range(0, len(token_ids), size):
        chunk = token_ids[start : start + size]
        ids = np.full((len(chunk), max(map(len, chunk))), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        out.append((ids, mask))
    return out


def measure(runners: dict, work: list[tuple[np.ndarray, np.ndarray]], rounds: int) -> dict[str, dict]:
    """Per variant: texts/s of each round and the latency of every call (seconds), rounds interleaved."""
    names = list(runners)
    stats = {name: {"texts_per_s": [], "latencies": []} for name in names}
    texts = sum(len(ids) for ids, _ in work)
    for name in names:  # warm-up: the first call, and the widest batch (onnxruntime allocates per shape)
        runners[name](*work[0])
        runners[name](*max(work, key=lambda b: b[0].size))
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            spent = 0.0
            for ids, mask in work:
                started = time.perf_counter()
                runners[name](ids, mask)
                took = time.perf_counter() - started
                spent += took
                stats[name]["latencies"].append(took)
            stats[name]["texts_per_s"].append(texts / spent)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="intent", help="text task whose fine-tuned classifier and test split to use")
    parser.add_argument("--model", type=Path, default=None,
                        help="fine-tuned classifier folder (default: finetune.tasks.<task>.out_dir/<task>/pretrained)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size")
    parser.add_argument("--max-texts", type=int, default=512, help="use at most this many test texts (file order)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for PyTorch and onnxruntime alike (default: serve.intra_op_threads)")
    parser.add_argument("--extra", action="store_true", help="also per-channel and reduce-range INT8 variants")
    parser.add_argument("--quick", action="store_true", help="64 texts, one round: a smoke test")
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. preset=tiny")
    args = parser.parse_args()

    from selfsup.config import load_config

    cfg = load_config(REPO / "params.yaml", args.overrides)
    if args.task not in cfg.data.tasks or args.task not in cfg.finetune.tasks:
        sys.exit(f"--task {args.task}: not a text task of params.yaml ({sorted(cfg.finetune.tasks)})")
    task_cfg, spec = cfg.finetune.tasks[args.task], cfg.data.tasks[args.task]
    model_dir = args.model or REPO / task_cfg.out_dir / args.task / "pretrained"
    test_csv = REPO / spec.dir / "test.csv"
    for needed, what in ((model_dir / "config.json", f"the fine-tuned {args.task} classifier"),
                         (test_csv, f"the {args.task} test split")):
        if not needed.exists():
            sys.exit(f"{needed} is missing ({what}): run `make run` (or `dvc repro finetune@{args.task}`) first")
    threads = args.threads or cfg.serve.intra_op_threads
    rounds = 1 if args.quick else args.rounds

    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer

    from selfsup.metrics import classification_scores
    from selfsup.serve.runtime import runs_on_one_thread, session_options
    from selfsup.text.data import read_labelled
    from selfsup.text.model import load_classifier

    torch.set_num_threads(threads)
    texts, gold_names = read_labelled(test_csv)
    if args.quick:  # 64 texts (repeated when the split is smaller) so that batch 64 is a full batch
        texts, gold_names = (texts * 64)[:64], (gold_names * 64)[:64]
    texts, gold_names = texts[: args.max_texts], gold_names[: args.max_texts]
    model = load_classifier(model_dir).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    unknown = sorted(set(gold_names) - set(labels))
    if unknown:
        sys.exit(f"{test_csv}: labels {unknown} are not the model's labels {labels}")
    gold = [labels.index(y) for y in gold_names]
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(task_cfg.max_length)  # as the served model does (export.json max_length)
    token_ids = [e.ids for e in tokenizer.encode_batch(texts)]
    pad_id = tokenizer.token_to_id("[PAD]")
    load_before = os.getloadavg()

    def eager(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()

    def onnx_runner(path: Path, as_served: bool = False):
        """``as_served``: like the service, a call small enough (``runs_on_one_thread``) runs on a one-thread session
        of the same graph."""
        def session(n_threads: int):
            return ort.InferenceSession(str(path), sess_options=session_options(n_threads),
                                        providers=["CPUExecutionProvider"])

        full = session(threads)
        small = session(1) if as_served and threads > 1 else full
        return lambda ids, mask: (small if runs_on_one_thread(*ids.shape) else full).run(
            ["logits"], {"input_ids": ids, "attention_mask": mask})[0]

    served_fp32 = "ort fp32 fused" if cfg.export.ort_fusion else "ort fp32"
    served_int8 = "ort int8 fused" if cfg.export.ort_fusion else "ort int8"
    with tempfile.TemporaryDirectory() as scratch:
        graphs = build_graphs(model, task_cfg.max_length, cfg.export.opset, Path(scratch), args.extra)
        runners = {"pytorch eager fp32": eager, **{name: onnx_runner(path) for name, path in graphs.items()}}
        sizes = {name: path.stat().st_size for name, path in graphs.items()}
        if threads > 1:  # the service's session choice, beside the same graph on `threads` threads for every call
            for name in (served_fp32, served_int8):
                runners[f"{name}, as served"] = onnx_runner(graphs[name], as_served=True)
                sizes[f"{name}, as served"] = sizes[name]
            served_fp32, served_int8 = f"{served_fp32}, as served", f"{served_int8}, as served"

        scores = {}
        full = batches(token_ids, 64, pad_id)
        reference = np.concatenate([eager(ids, mask) for ids, mask in full])
        for name, run in runners.items():
            logits = np.concatenate([run(ids, mask) for ids, mask in full])
            predicted = logits.argmax(-1)
            scores[name] = {**classification_scores(gold, predicted.tolist()),
                            "label_agreement": float((predicted == reference.argmax(-1)).mean()),
                            "max_abs_logit_diff": float(np.abs(logits - reference).max())}

        speed = {}
        for size in BATCH_SIZES:
            stats = measure(runners, batches(token_ids, size, pad_id), rounds)
            base = np.array(stats["pytorch eager fp32"]["texts_per_s"])
            for name, s in stats.items():
                latencies_ms = np.array(s["latencies"]) * 1000
                speed[name, size] = {"texts_per_s": float(np.median(s["texts_per_s"])),
                                     "p50_ms": float(np.percentile(latencies_ms, 50)),
                                     "p99_ms": float(np.percentile(latencies_ms, 99)),
                                     "ratio": float(np.median(np.array(s["texts_per_s"]) / base))}
    load_after = os.getloadavg()

    print(f"\n{args.task}: {len(texts)} test texts, {threads} thread(s), {rounds} round(s); {cpu_name()}, "
          f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print("\n| variant | batch | texts/s | p50 ms | p99 ms | x eager |\n|---|---:|---:|---:|---:|---:|")
    for size in BATCH_SIZES:
        for name in runners:
            s = speed[name, size]
            print(f"| {name} | {size} | {s['texts_per_s']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                  f"{s['ratio']:.2f} |")
    print("\n| variant | MB | accuracy | macro-F1 | label agreement | max abs logit diff |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, s in scores.items():
        mb = f"{sizes[name] / 1e6:.1f}" if name in sizes else ""
        print(f"| {name} | {mb} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | {s['label_agreement']:.4f} | "
              f"{s['max_abs_logit_diff']:.2e} |")

    summary = {"benchmark": "inference", "task": args.task, "texts": len(texts), "threads": threads,
               "rounds": rounds, "served_fp32": served_fp32, "served_int8": served_int8,
               "ratio_ort_fp32_b1": round(speed[served_fp32, 1]["ratio"], 3),
               "ratio_ort_fp32_b64": round(speed[served_fp32, 64]["ratio"], 3),
               "ratio_ort_int8_b1": round(speed[served_int8, 1]["ratio"], 3),
               "ratio_ort_int8_b64": round(speed[served_int8, 64]["ratio"], 3),
               "accuracy_drop_int8_pt": round(100 * (scores["pytorch eager fp32"]["accuracy"]
                                                     - scores[served_int8]["accuracy"]), 3),
               "label_agreement_int8": round(scores[served_int8]["label_agreement"], 4),
               "texts_per_s": {f"{name} b{size}": round(s["texts_per_s"], 1) for (name, size), s in speed.items()},
               "device": f"{cpu_name()}, {os.cpu_count()} cores", "load_average": [round(load_before[0], 2),
                                                                              round(load_after[0], 2)],
               "date": datetime.date.today().isoformat(), "quick": args.quick}
    print()
    for key, target in TARGETS.items():
        print(f"{key}: {summary[key]:.2f}x (target >= {target}x): {'met' if summary[key] >= target else 'NOT met'}")
    drop = summary["accuracy_drop_int8_pt"]
    print(f"accuracy_drop_int8_pt: {drop:.2f} (target <= {MAX_ACCURACY_DROP_PT}): "
          f"{'met' if drop <= MAX_ACCURACY_DROP_PT else 'NOT met'}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
