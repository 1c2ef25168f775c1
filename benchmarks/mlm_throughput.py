"""MLM pretraining throughput: the HF baseline (``run_mlm.py`` style) against selfsup's recipe, in one run.

Baseline: every text padded to ``seq_len`` and ``BertForMaskedLM(input_ids, attention_mask, labels)``, which
projects every position onto the vocabulary. Ours: texts packed into full blocks (no padding) and the vocabulary
head applied to the masked positions only (``selfsup.text.model.mlm_loss``). Same model, same optimizer,
same masking collator. Reports *real* (non-padding) tokens per second and the ratios.

    python benchmarks/mlm_throughput.py [--steps 20] [--device cpu|cuda] [key=value overrides]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 3 warm-up steps)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=4000, help="corpus documents to sample from")
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides, e.g. preset=base")
    args = parser.parse_args()

    from transformers import DataCollatorForLanguageModeling

    from selfsup.config import load_config
    from selfsup.text.data import pack_corpus, read_corpus
    from selfsup.text.model import masked_lm, mlm_loss
    from selfsup.text.tokenizer import load_tokenizer
    from selfsup.runtime import autocast

    cfg = load_config("params.yaml", args.overrides)
    pc = cfg.pretrain
    device = torch.device(args.device)
    tokenizer = load_tokenizer(Path(cfg.tokenizer.out_dir))
    docs = [d for d in read_corpus(cfg.data.corpus) if d[0] == "tweets"][: args.docs // 2]
    docs += [d for d in read_corpus(cfg.data.corpus) if d[0] != "tweets"][: args.docs // 2]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=pc.mlm_probability, return_tensors="pt")
    packed = pack_corpus(docs, tokenizer, pc.seq_len)
    # baseline input: one (truncated) text per row, padded to seq_len, as run_mlm.py does without --line_by_line=False
    padded = tokenizer([t for _, t in docs], truncation=True, max_length=pc.seq_len, padding="max_length",
                       return_tensors="pt")

    def run(variant: str) -> float:
        torch.manual_seed(0)
        model = masked_lm(pc.model, len(tokenizer), tokenizer.pad_token_id).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        real_tokens, elapsed = 0, 0.0
        for step in range(3 + args.steps):
            if variant == "baseline":
                index = torch.randint(0, padded["input_ids"].shape[0], (pc.batch_size,), generator=generator)
                batch = collator([{"input_ids": ids, "attention_mask": m}
                                  for ids, m in zip(padded["input_ids"][index], padded["attention_mask"][index])])
                mask = batch["attention_mask"].to(device)
            else:
                index = torch.randint(0, len(packed), (pc.batch_size,), generator=generator)
                batch = collator([{"input_ids": ids} for ids in packed.blocks[index]])
                mask = torch.ones_like(batch["input_ids"]).to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast(device, pc.loop.precision):
                if variant == "baseline":
                    loss = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                                 labels=batch["labels"].to(device)).loss
                else:
                    loss = mlm_loss(model, batch["input_ids"].to(device), batch["labels"].to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= 3:
                elapsed += time.perf_counter() - start
                real_tokens += int(mask.sum())
        return real_tokens / elapsed

    baseline = run("baseline")
    ours = run("selfsup")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    m = pc.model
    print(f"{datetime.date.today()} on {where}; model {m.num_layers}x{m.hidden_size}, vocab {len(tokenizer):,}, "
          f"seq {pc.seq_len}, batch {pc.batch_size}, {pc.loop.precision}")
    print(f"  baseline (padded texts, full-vocabulary head): {baseline:10,.0f} real tokens/s")
    print(f"  selfsup  (packed blocks, masked-only head):    {ours:10,.0f} real tokens/s")
    print(f"  ratio: {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
