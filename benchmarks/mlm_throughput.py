"""MLM pretraining throughput: the two Hugging Face recipes people use against selfsup's, in one run.

    python benchmarks/mlm_throughput.py [--rounds 10] [--steps-per-round 2] [--device cpu|cuda] [--no-compile]
                                        [--quick] [key=value overrides, e.g. preset=base]

Three recipes, same model config (``pretrain.model``), same initial weights, same documents, same masking collator
(``DataCollatorForLanguageModeling``, ``pretrain.mlm_probability``) and the same global batch in *real* tokens
(``pretrain.batch_size`` x ``pretrain.seq_len``):

* **padded** — ``run_mlm.py --line_by_line --pad_to_max_length``: every text its own row, truncated and padded to
  ``seq_len``; as many rows as carry ``batch_size x seq_len`` real tokens on average.
* **grouped** — ``run_mlm.py``'s default ``group_texts``: texts tokenized with their special tokens, concatenated
  (per 1,000 texts, as ``datasets.map(batched=True)`` does) and cut into full blocks of ``seq_len``.
* **ours** — ``selfsup.text.pretrain_mlm``'s step: ``pack_corpus`` blocks drawn with the source weights, the
  vocabulary head on the masked positions only (``selfsup.text.model.mlm_loss``), ``pretrain.loop.precision``,
  SDPA attention, fused AdamW on CUDA (``foreach`` elsewhere), and ``loss.item()`` every step as the loop logs it.

Both baselines are a Hugging Face ``Trainer`` step: rows as the ``datasets`` library hands them (dicts of Python
lists, with ``special_tokens_mask``) through the collator, ``BertForMaskedLM(**batch, labels=...).loss`` (the
vocabulary head on every position), the same precision, SDPA (the transformers default), the Trainer's default
optimizer (``adamw_torch_fused`` since torch 2.8, on CPU too), gradient clipping at 1.0 and a linear schedule. Every
recipe's timed step includes drawing and collating its batch, as the real loops do (no DataLoader workers).

An ablation toggles one optimization of ours at a time: packing (padded rows instead, encoder with the padding
mask), the masked-only head, bf16 autocast (on CPU only where the CPU has native bf16: AMX or AVX512-BF16), SDPA
(eager attention instead), fused AdamW, and ``torch.compile`` of the encoder (static shapes: [B, L] never changes;
the head stays eager because the number of masked positions varies; skipped with ``--quick`` or ``--no-compile``,
compile time reported).

Timing: rounds are interleaved (each round runs every recipe for ``--steps-per-round`` steps, in a rotated order) so
that load from other processes hits every recipe alike; tokens/s is the median over rounds of real (non-padding)
tokens per second, and each ratio is the median of the per-round ratios.

MFU = model FLOP/s / device peak, with the FLOPs of a training step (forward + backward = 3 x forward, 2 FLOPs per
multiply-add) counted on real tokens only (padding is not useful work):

    6 x T x n_layers x (4 H^2 + 2 H I)      encoder matmuls (Q, K, V, output; the two MLP layers)
  + 12 x T x n_layers x L x H               attention scores and weighted values (QK^T, AV)
  + 6 x M x (H^2 + H V)                     MLM head (transform + vocabulary projection) on M positions

T = real tokens of the step, L = seq_len, H = hidden size, I = intermediate size, V = vocabulary; M = the positions
the vocabulary head is applied to (ours: the masked ones; the baselines: every real position). Embedding lookups,
LayerNorm, softmax and GELU are left out. The run also prints the FLOPs each recipe executes per real token (the
padded one counting its padding) and their ratios to ours: the speed-up equal hardware efficiency would give.

Peak: dense bf16 (or TF32 for fp32, which ``selfsup.runtime.setup`` enables) tensor-core TFLOP/s of the GPU from its
name (H100 SXM/PCIe, H200, A100); on a CPU an *estimate*, cores x clock (/proc/cpuinfo "cpu MHz") x FLOPs per cycle
per core from the lscpu flags: fp32 64 with AVX-512 (two FMA units x 16 lanes x 2), 32 with AVX2+FMA; bf16 1,024
with AMX, 128 with AVX512-BF16. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# issue 16's targets: ours / padded and ours / grouped in real tokens per second on 2 CPU cores, and on an
# H100/H200 for the base preset (BERT-base, sequence 128) also the MFU
TARGETS = {"cpu": {"ratio_vs_padded": 4.0, "ratio_vs_grouped": 1.3},
           "cuda": {"ratio_vs_padded": 3.5, "ratio_vs_grouped": 1.5, "mfu_ours": 0.40}}
# dense tensor-core peaks in TFLOP/s: (bf16, tf32), from NVIDIA's data sheets (without sparsity); first match wins
GPU_PEAKS = (("H200 NVL", None), ("H200", (989.4, 494.7)), ("H100 PCIe", (756.5, 378.0)), ("H100 NVL", None),
             ("H100", (989.4, 494.7)), ("A100", (312.0, 156.0)))
GROUP_TEXTS_CHUNK = 1000  # run_mlm.py groups within each batch of datasets.map(batched=True): 1,000 texts


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One way of running an MLM training step."""

    name: str
    data: str  # "padded" (one text per row), "grouped" (group_texts blocks) or "packed" (pack_corpus blocks)
    head: str  # "all": BertForMaskedLM(labels=...) on every position; "masked": the masked positions only
    loader: str  # "trainer": dicts of Python lists through the collator; "tensors": rows of a LongTensor
    precision: str  # "fp32" or "bf16" (autocast)
    attention: str  # "sdpa" or "eager"
    fused_adamw: bool
    compiled: bool = False  # torch.compile of the encoder (static shapes)
    log_loss: bool = False  # loss.item() every step, as pretrain_mlm's loop does


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo's "model name"), else the machine type."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_flags() -> set[str]:
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16 on x86, the BF16 extension on Arm: bf16 matmuls faster than an fp32 emulation."""
    return bool({"amx_bf16", "avx512_bf16", "bf16"} & cpu_flags())


def peak_flops(device: torch.device, precision: str, threads: int) -> tuple[float | None, str]:
    """(peak FLOP/s or None when unknown, how it was obtained)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS:
            if key in name:
                if peaks is None:
                    break
                tflops = peaks[0] if precision == "bf16" else peaks[1]
                kind = "bf16" if precision == "bf16" else "TF32"
                return tflops * 1e12, f"{name}: {tflops:g} TFLOP/s dense {kind} (data sheet)"
        return None, f"{name}: peak unknown (table: H100 SXM/PCIe, H200, A100), no MFU"
    flags = cpu_flags()
    mhz = next((float(line.split(":", 1)[1]) for line in _cpuinfo_lines() if line.startswith("cpu MHz")), None)
    if mhz is None or not flags:
        return None, "CPU clock or flags unknown (/proc/cpuinfo), no MFU"
    fp32 = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    per_cycle, unit = fp32, "fp32 FMA (AVX-512)" if fp32 == 64 else "fp32 FMA"
    if precision == "bf16":
        if "amx_bf16" in flags:
            per_cycle, unit = 1024, "bf16 AMX"
        elif "avx512_bf16" in flags:
            per_cycle, unit = 128, "bf16 AVX512-BF16"
    cores = min(threads, os.cpu_count() or threads)
    peak = cores * mhz * 1e6 * per_cycle
    return peak, (f"estimate: {cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOPs/cycle ({unit}) = "
                  f"{peak / 1e9:,.0f} GFLOP/s; turbo and memory bandwidth make CPU MFU indicative only")


def train_flops(model_cfg, vocab_size: int, seq_len: int, tokens: int, head_positions: int) -> float:
    """Training FLOPs of a step (see the module docstring): ``tokens`` real tokens, the head on ``head_positions``."""
    h, i, n = model_cfg.hidden_size, model_cfg.intermediate_size, model_cfg.num_layers
    encoder = 6 * tokens * n * (4 * h * h + 2 * h * i) + 12 * tokens * n * seq_len * h
    return encoder + 6 * head_positions * (h * h + h * vocab_size)


def sample_docs(corpus: Path, source_weights: dict[str, float], n_docs: int, seed: int) -> list[tuple[str, str]]:
    """``n_docs`` documents spread evenly over the sources pretraining draws from (weight > 0; unnamed sources weigh
    1.0), a seeded sample of each, shuffled together: short tweets and long articles alike."""
    from selfsup.text.data import read_corpus

    by_source: dict[str, list[tuple[str, str]]] = {}
    for source, text in read_corpus(corpus):
        if source_weights.get(source, 1.0) > 0:
            by_source.setdefault(source, []).append((source, text))
    if not by_source:
        raise ValueError(f"{corpus}: no document of a source with pretrain.source_weights > 0")
    rng = random.Random(seed)
    docs: list[tuple[str, str]] = []
    for source in sorted(by_source):
        members = by_source[source]
        docs += rng.sample(members, min(len(members), n_docs // len(by_source)))
    rng.shuffle(docs)
    return docs


def group_texts(docs: list[tuple[str, str]], tokenizer, block: int) -> list[dict[str, list[int]]]:
    """``run_mlm.py``'s recipe: tokenize with special tokens (no truncation), concatenate every field within each
    chunk of 1,000 texts, cut into blocks of ``block`` tokens, drop the chunk's remainder."""
    blocks = []
    for start in range(0, len(docs), GROUP_TEXTS_CHUNK):
        texts = [text for _, text in docs[start : start + GROUP_TEXTS_CHUNK]]
        encoded = tokenizer(texts, return_special_tokens_mask=True, verbose=False)
        joined = {key: [token for row in rows for token in row] for key, rows in encoded.items()}
        usable = len(joined["input_ids"]) // block * block
        blocks += [{key: values[i : i + block] for key, values in joined.items()} for i in range(0, usable, block)]
    if not blocks:
        raise ValueError(f"the sampled documents yield no block of {block} tokens")
    return blocks


class Run:
    """A recipe's model, optimizer, schedule and batch source; ``step()`` runs one timed training step."""

    def __init__(self, recipe: Recipe, data: dict, pc, tokenizer, collator, device: torch.device, seed: int):
        from transformers import get_linear_schedule_with_warmup

        from selfsup.text.model import masked_lm

        self.recipe, self.data, self.pc, self.collator, self.device = recipe, data, pc, collator, device
        torch.manual_seed(seed)  # every recipe starts from the same weights
        self.model = masked_lm(pc.model, len(tokenizer), tokenizer.pad_token_id).to(device).train()
        if recipe.attention != "sdpa":
            self.model.set_attn_implementation(recipe.attention)
        if recipe.compiled:
            self.model.bert.compile(dynamic=False)
        params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(  # pretrain_mlm's groups: no weight decay on biases and LayerNorm
            [{"params": [p for p in params if p.ndim >= 2], "weight_decay": pc.weight_decay},
             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
            lr=pc.learning_rate, fused=recipe.fused_adamw)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, pc.warmup_steps, pc.max_steps)
        self.sampler = torch.Generator().manual_seed(seed)
        self.rows = data["padded_rows"] if recipe.data == "padded" else pc.batch_size

    def _batch(self) -> tuple[dict[str, torch.Tensor], int]:
        """(the collated batch on the device, its real tokens)."""
        recipe, data = self.recipe, self.data
        if recipe.data == "packed":  # pretrain_mlm: blocks drawn with the source weights, rows as tensors
            index = torch.multinomial(data["weights"], self.rows, replacement=True, generator=self.sampler)
            batch = self.collator(list(data["packed"].blocks[index]))
            real = batch["input_ids"].numel()
        else:  # a Trainer's RandomSampler
            source = data["padded"] if recipe.data == "padded" else data["grouped"]
            index = torch.randint(0, len(source["rows"]), (self.rows,), generator=self.sampler).tolist()
            if recipe.loader == "trainer":  # dicts of lists, as datasets returns them; the collator pads and masks
                batch = self.collator([source["rows"][i] for i in index])
            else:  # padded rows as tensors; the padding mask kept from before masking (a random token may be [PAD])
                batch = self.collator(list(source["ids"][index]))
                batch["attention_mask"] = source["mask"][index]
            real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}, real

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F

        from selfsup.text.model import mlm_loss

        if self.recipe.head == "all":  # the HF step: logits [B, L, V] for every position
            return self.model(**batch).loss
        if "attention_mask" not in batch:  # full blocks: the real step
            return mlm_loss(self.model, batch["input_ids"], batch["labels"])
        # padded rows (the packing ablation): the encoder must not attend to padding; head on the masked positions
        hidden = self.model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        selected = batch["labels"] != -100  # [B, L]
        return F.cross_entropy(self.model.cls(hidden[selected]).float(), batch["labels"][selected])

    def step(self) -> tuple[float, int, int]:
        """One training step: (seconds, real tokens, positions the vocabulary head was applied to)."""
        from selfsup.runtime import autocast

        self._sync()
        start = time.perf_counter()
        batch, real = self._batch()
        with autocast(self.device, self.recipe.precision):
            loss = self._loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.recipe.log_loss:
            loss.item()
        self._sync()
        seconds = time.perf_counter() - start
        head = int((batch["labels"] != -100).sum()) if self.recipe.head == "masked" else real
        return seconds, real, head

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def prepare_data(docs, tokenizer, pc) -> dict:
    """Every recipe's rows, built from the same documents."""
    from selfsup.text.data import block_weights, pack_corpus

    texts = [text for _, text in docs]
    # run_mlm.py --line_by_line --pad_to_max_length: truncated and padded to seq_len, special tokens marked
    encoded = tokenizer(texts, truncation=True, max_length=pc.seq_len, padding="max_length",
                        return_special_tokens_mask=True)
    padded_rows = [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]
    ids = torch.tensor(encoded["input_ids"])  # [N, L]
    mask = torch.tensor(encoded["attention_mask"])  # [N, L]
    mean_real = mask.sum().item() / len(texts)
    packed = pack_corpus(docs, tokenizer, pc.seq_len)
    return {
        "padded": {"rows": padded_rows, "ids": ids, "mask": mask},
        # the padded recipe's rows per step: the same real tokens per step as batch_size full blocks, on average
        "padded_rows": max(1, round(pc.batch_size * pc.seq_len / mean_real)),
        "mean_real": mean_real,
        "grouped": {"rows": group_texts(docs, tokenizer, pc.seq_len)},
        "packed": packed,
        # the sampled sources only (weight 0 ones were left out of the sample)
        "weights": block_weights(packed, {s: w for s, w in pc.source_weights.items() if s in packed.source_names}),
    }


def recipes(pc, device: torch.device, compile_encoder: bool) -> tuple[list[Recipe], list[tuple[Recipe, str]]]:
    """(the baselines and ours, the ablation rows with why a row is skipped, "" when it runs)."""
    cuda = device.type == "cuda"
    padded = Recipe("padded: HF Trainer, line by line", "padded", "all", "trainer", pc.loop.precision, "sdpa", True)
    grouped = dataclasses.replace(padded, name="grouped: HF Trainer, group_texts", data="grouped")
    ours = Recipe("ours: packed, masked-only head", "packed", "masked", "tensors", pc.loop.precision, "sdpa",
                  fused_adamw=cuda, log_loss=True)
    other_precision = "fp32" if ours.precision == "bf16" else "bf16"
    bf16_skip = "" if cuda or other_precision == "fp32" or cpu_has_native_bf16() else \
        "skipped: no native bf16 on this CPU (no AMX / AVX512-BF16)"
    ablations = [
        (dataclasses.replace(ours, name="- packing (padded rows)", data="padded"), ""),
        (dataclasses.replace(ours, name="- masked-only head (head on every position)", head="all"), ""),
        (dataclasses.replace(ours, name=f"{'-' if other_precision == 'fp32' else '+'} bf16 autocast "
                                        f"({other_precision})", precision=other_precision), bf16_skip),
        (dataclasses.replace(ours, name="- SDPA (eager attention)", attention="eager"), ""),
        (dataclasses.replace(ours, name=f"{'-' if ours.fused_adamw else '+'} fused AdamW",
                             fused_adamw=not ours.fused_adamw), ""),
        (dataclasses.replace(ours, name="+ torch.compile (encoder, static shapes)", compiled=True),
         "" if compile_encoder else "skipped (--quick or --no-compile)"),
    ]
    return [padded, grouped, ours], ablations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--steps-per-round", type=int, default=2, help="timed steps per recipe and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per recipe first (compilation too)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: pretrain.loop.device)")
    parser.add_argument("--docs", type=int, default=4000, help="corpus documents to sample, spread over the sources")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile ablation row")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test settings: the tiny preset, 2 rounds of 1 step, 400 documents, no compile")
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. preset=base")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        if not any(o.startswith("preset=") for o in overrides):
            overrides.insert(0, "preset=tiny")
        args.rounds, args.steps_per_round, args.warmup, args.docs = 2, 1, 1, min(args.docs, 400)

    from transformers import DataCollatorForLanguageModeling

    from selfsup.config import load_config
    from selfsup.runtime import setup
    from selfsup.text.tokenizer import load_tokenizer

    cfg = load_config(REPO / "params.yaml", overrides)
    pc = cfg.pretrain
    loop = dataclasses.replace(pc.loop, device=args.device) if args.device else pc.loop
    device = setup(loop)  # seeds, threads (loop.threads or every core), TF32 on CUDA: as pretrain_mlm
    tokenizer = load_tokenizer(Path(cfg.tokenizer.out_dir))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=pc.mlm_probability, return_tensors="pt")
    docs = sample_docs(Path(cfg.data.corpus), pc.source_weights, args.docs, loop.seed)
    data = prepare_data(docs, tokenizer, pc)
    compile_encoder = not (args.quick or args.no_compile)
    base, ablations = recipes(pc, device, compile_encoder)
    runs = base + [recipe for recipe, skip in ablations if not skip]
    threads = torch.get_num_threads()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU {cpu_name()} ({threads} threads)")
    m = pc.model
    print(f"{datetime.date.today()} on {where}, torch {torch.__version__}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"model {m.num_layers} x {m.hidden_size} (intermediate {m.intermediate_size}), vocabulary "
          f"{len(tokenizer):,}, seq_len {pc.seq_len}, {pc.batch_size} x {pc.seq_len} = "
          f"{pc.batch_size * pc.seq_len:,} real tokens per step, masking {pc.mlm_probability:g}")
    print(f"data: {len(docs):,} documents ({', '.join(sorted({s for s, _ in docs}))}); padded rows hold "
          f"{data['mean_real']:.1f} real tokens on average -> {data['padded_rows']} rows per step; "
          f"{len(data['grouped']['rows']):,} grouped blocks, {len(data['packed']):,} packed blocks", flush=True)

    states, compile_seconds = {}, {}
    for recipe in runs:
        states[recipe] = Run(recipe, data, pc, tokenizer, collator, device, loop.seed)
        warm = time.perf_counter()
        for _ in range(args.warmup):
            states[recipe].step()
        if recipe.compiled:
            compile_seconds[recipe] = time.perf_counter() - warm
            print(f"torch.compile: {args.warmup} warm-up steps (compilation included) took "
                  f"{compile_seconds[recipe]:.0f} s", flush=True)

    per_round: dict[Recipe, list[float]] = {r: [] for r in runs}  # real tokens/s of each round
    flops: dict[Recipe, list[float]] = {r: [] for r in runs}  # model FLOP/s of each round
    work: dict[Recipe, list[float]] = {r: [0, 0.0] for r in runs}  # real tokens, model FLOPs: all rounds
    for round_index in range(args.rounds):
        shift = round_index % len(runs)
        for recipe in runs[shift:] + runs[:shift]:
            seconds = real = head = 0
            for _ in range(args.steps_per_round):
                s, t, h = states[recipe].step()
                seconds, real, head = seconds + s, real + t, head + h
            step_flops = train_flops(m, len(tokenizer), pc.seq_len, real, head)
            per_round[recipe].append(real / seconds)
            flops[recipe].append(step_flops / seconds)
            work[recipe][0] += real
            work[recipe][1] += step_flops

    padded, grouped, ours = base
    peak, peak_note = peak_flops(device, pc.loop.precision, threads)

    def rate(recipe: Recipe) -> float:
        return statistics.median(per_round[recipe])

    def ratio(numerator: Recipe, denominator: Recipe) -> float:
        return statistics.median(a / b for a, b in zip(per_round[numerator], per_round[denominator]))

    def mfu(recipe: Recipe) -> float | None:
        if recipe.precision != pc.loop.precision:  # another precision has another peak
            other, _ = peak_flops(device, recipe.precision, threads)
            return statistics.median(flops[recipe]) / other if other else None
        return statistics.median(flops[recipe]) / peak if peak else None

    def fmt_mfu(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    print(f"\n{args.rounds} rounds x {args.steps_per_round} steps per recipe after {args.warmup} warm-up steps; "
          f"median of rounds; precision {pc.loop.precision}")
    print("| recipe | real tokens/s | ours ÷ recipe | MFU |\n|---|---:|---:|---:|")
    for recipe in base:
        speedup = "—" if recipe is ours else f"{ratio(ours, recipe):.2f}x"
        print(f"| {recipe.name} | {rate(recipe):,.0f} | {speedup} | {fmt_mfu(mfu(recipe))} |")
    print("\nablation: one change to ours at a time")
    print("| change | real tokens/s | ÷ ours | MFU |\n|---|---:|---:|---:|")
    ablation_json = {}
    for recipe, skip in ablations:
        if skip:
            print(f"| {recipe.name} | {skip} | | |")
            ablation_json[recipe.name] = None
            continue
        extra = f" (compile {compile_seconds[recipe]:.0f} s)" if recipe in compile_seconds else ""
        print(f"| {recipe.name}{extra} | {rate(recipe):,.0f} | {ratio(recipe, ours):.2f}x | {fmt_mfu(mfu(recipe))} |")
        ablation_json[recipe.name] = {"tokens_per_s": round(rate(recipe)), "ratio_to_ours": ratio(recipe, ours)}
    # the padded recipe also computes on its padding: the FLOPs it executes per real token, for the ceiling below
    executed = {padded: train_flops(m, len(tokenizer), pc.seq_len, pc.seq_len, pc.seq_len) / data["mean_real"]}
    per_token = {r: executed.get(r, work[r][1] / work[r][0]) for r in base}
    print(f"\nMFU peak: {peak_note}")
    print("executed model FLOPs per real token: " + ", ".join(f"{r.data} {per_token[r] / 1e6:.2f} M" for r in base)
          + " -> FLOP ratios (what equal efficiency would give): "
          f"vs padded {per_token[padded] / per_token[ours]:.2f}x, "
          f"vs grouped {per_token[grouped] / per_token[ours]:.2f}x")
    summary = {
        "device": where, "tokens_per_s_padded": round(rate(padded)), "tokens_per_s_grouped": round(rate(grouped)),
        "tokens_per_s_ours": round(rate(ours)), "ratio_vs_padded": ratio(ours, padded),
        "ratio_vs_grouped": ratio(ours, grouped), "mfu_ours": mfu(ours),
    }
    where_targets = "on 2 CPU cores" if device.type == "cpu" else "on an H100/H200, preset=base"
    for key, target in TARGETS.get(device.type, {}).items():
        value = summary[key]
        verdict = "n/a" if value is None else "met" if value >= target else "NOT met"
        shown = "n/a" if value is None else f"{100 * value:.1f} %" if key == "mfu_ours" else f"{value:.2f}x"
        goal = f"{100 * target:.0f} %" if key == "mfu_ours" else f"{target}x"
        print(f"{key}: {shown} (target {where_targets} >= {goal}: {verdict})")
    summary.update({"flop_ratio_vs_padded": per_token[padded] / per_token[ours],
                    "flop_ratio_vs_grouped": per_token[grouped] / per_token[ours], "precision": pc.loop.precision,
                    "seq_len": pc.seq_len, "batch_size": pc.batch_size,
                    "padded_rows": data["padded_rows"], "peak": peak_note, "ablation": ablation_json,
                    "compile_s": {r.name: round(s, 1) for r, s in compile_seconds.items()},
                    "load_average": os.getloadavg()[0]})
    print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
