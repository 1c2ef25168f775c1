"""BERT-style encoders built from our config (never from a hub checkpoint)."""

from __future__ import annotations

from selfsup.config import ModelConfig


def bert_config(model: ModelConfig, vocab_size: int, pad_token_id: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        intermediate_size=model.intermediate_size,
        max_position_embeddings=model.max_position,
        hidden_dropout_prob=model.dropout,
        attention_probs_dropout_prob=model.dropout,
        pad_token_id=pad_token_id,
        type_vocab_size=1,
        **extra,
    )


def masked_lm(model: ModelConfig, vocab_size: int, pad_token_id: int):
    """A freshly initialised ``BertForMaskedLM`` (SDPA attention)."""
    from transformers import BertForMaskedLM

    config = bert_config(model, vocab_size, pad_token_id)
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)


def classifier_from_scratch(model: ModelConfig, vocab_size: int, pad_token_id: int, labels: list[str]):
    """A freshly initialised ``BertForSequenceClassification`` with the same architecture as the encoder."""
    from transformers import BertForSequenceClassification

    config = bert_config(model, vocab_size, pad_token_id, num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    config._attn_implementation = "sdpa"
    return BertForSequenceClassification(config)


def classifier_from_pretrained(folder, labels: list[str]):
    """The pretrained encoder with a new classification head (the MLM head is dropped)."""
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(
        str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}, local_files_only=True, attn_implementation="sdpa",
    )


def mlm_loss(model, input_ids, labels):
    """Masked-LM cross-entropy computed on the selected positions only.

    ``BertForMaskedLM.forward`` projects *every* position onto the vocabulary ([B, L, V]) although only ~15% carry a
    label; here the encoder runs on all positions and the vocabulary head only on the selected ones, which is the
    same loss for a fraction of the cost (2-3x faster steps on CPU with a 16k vocabulary, measured in
    benchmarks/). Shapes: ``input_ids``, ``labels`` [B, L] (``labels`` -100 where not selected) -> scalar.
    """
    import torch.nn.functional as F

    if input_ids.shape != labels.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must match")
    hidden = model.bert(input_ids=input_ids).last_hidden_state  # [B, L, H]
    selected = labels != -100  # [B, L]
    logits = model.cls(hidden[selected])  # [M, V], M = number of selected positions
    return F.cross_entropy(logits.float(), labels[selected])
