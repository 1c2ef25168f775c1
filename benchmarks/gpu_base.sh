#!/usr/bin/env bash
# The text pipeline's `base` preset (BERT-base size, bf16, SDPA) on a CUDA GPU, stage by stage in dvc.yaml's order,
# without DVC, MLflow or Prefect (a GPU box often has only torch + transformers). Prints each stage's metrics.
#
#   bash benchmarks/gpu_base.sh [key=value overrides...]    e.g. pretrain.max_steps=3000
#
# Results go to artifacts/ and models/ as in `dvc repro`; RESULTS_DIR (if set) receives a copy of every metrics.json.
# TASKS (default "intent sentiment topic") picks the fine-tuning tasks and their order.
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TASKS="${TASKS:-intent sentiment topic}"
overrides=(preset=base tracking.enabled=false finetune.loop.progress=false pretrain.loop.progress=false "$@")
stage() {
  echo "== selfsup $* (${overrides[*]})"; local start=$SECONDS
  python -m selfsup.cli "$@" "${overrides[@]}"; echo "   $* took $((SECONDS - start)) s"
}
python - <<'PY'
import torch
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY
save() {  # copy the metrics as soon as a stage writes them: a GPU lease can end mid-run
  [[ -z "${RESULTS_DIR:-}" ]] && return 0
  for f in artifacts/pretrain/metrics.json artifacts/pretrain/val.csv artifacts/*/*/metrics.json; do
    [[ -f "$f" ]] || continue
    dest="$RESULTS_DIR/${f#artifacts/}"; mkdir -p "$(dirname "$dest")"; cp "$f" "$dest"
  done
}
stage tokenizer
stage pretrain; save
for task in $TASKS; do stage finetune "$task"; stage evaluate "$task"; save; done
python - <<'PY'
import json
import os
pre = json.load(open("artifacts/pretrain/metrics.json"))
print("pretrain:", {k: pre[k] for k in sorted(pre) if not isinstance(pre[k], (dict, list))})
for task in os.environ["TASKS"].split():
    m = json.load(open(f"artifacts/evaluate/{task}/metrics.json"))
    print(f"{task}: test macro-F1 pretrained {m['pretrained']['macro_f1']:.3f}, scratch {m['scratch']['macro_f1']:.3f}, "
          f"gain {m['pretraining_gain']['macro_f1']:+.3f} ({m['test_examples']} examples)")
PY
