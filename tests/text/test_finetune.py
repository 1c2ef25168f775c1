import dataclasses
import json
import math
import random
from collections import Counter

import pytest

from selfsup.text.finetune import cap_stratified, finetune, length_grouped_batches
from selfsup.text.pretrain_mlm import pretrain_mlm


def test_cap_stratified_keeps_shares_and_is_seeded():
    texts = [f"t{i}" for i in range(100)]
    labels = ["a"] * 70 + ["b"] * 20 + ["c"] * 10
    capped, capped_labels = cap_stratified(texts, labels, 50, seed=1)
    assert Counter(capped_labels) == {"a": 35, "b": 10, "c": 5}
    assert cap_stratified(texts, labels, 50, seed=1) == (capped, capped_labels)
    assert cap_stratified(texts, labels, 0, seed=1) == (texts, labels)


def test_length_grouped_batches_cover_everything_once():
    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10, "batches should hold similar lengths"


@pytest.fixture(scope="module")
def pretrained_dir(tiny_config, tiny_tokenizer_dir, corpus_docs, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"source": s, "id": str(i), "text": t}) + "\n"
                              for i, (s, t) in enumerate(corpus_docs)))
    cfg = dataclasses.replace(tiny_config.pretrain, out_dir=root / "mlm")
    pretrain_mlm(cfg, corpus, tiny_tokenizer_dir, root / "ckpt")
    return root / "mlm"


@pytest.mark.parametrize("init", ["pretrained", "scratch"])
def test_finetune_smoke(init, tiny_config, tiny_tokenizer_dir, pretrained_dir, built_data, tmp_path):
    spec = tiny_config.data.tasks["intent"]
    task_cfg = dataclasses.replace(tiny_config.finetune.tasks["intent"], epochs=2)
    out = tmp_path / init
    result = finetune("intent", init, task_cfg, tiny_config.finetune.loop, tiny_config.pretrain.model,
                      built_data / "intent", spec.labels, tiny_tokenizer_dir, pretrained_dir, out)
    assert result.train_examples == 64
    assert len(result.epochs) == 2 and 1 <= result.best_epoch <= 2
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert 0.0 <= result.val_macro_f1 <= 1.0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "training.json").read_text())["init"] == init
    assert json.loads((out / "config.json").read_text())["id2label"]["0"] == spec.labels[0]


def test_unknown_init_is_rejected(tiny_config, tiny_tokenizer_dir, built_data, tmp_path):
    with pytest.raises(ValueError, match="init must be one of"):
        finetune("intent", "random", tiny_config.finetune.tasks["intent"], tiny_config.finetune.loop,
                 tiny_config.pretrain.model, built_data / "intent", ["a", "b"], tiny_tokenizer_dir, None, tmp_path)
