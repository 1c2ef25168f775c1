import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.text.model import classifier_from_scratch, masked_lm, mlm_loss

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=32, dropout=0.0)


def test_masked_only_loss_equals_the_hf_reference():
    torch.manual_seed(0)
    model = masked_lm(TINY, vocab_size=50, pad_token_id=0).eval()
    input_ids = torch.randint(5, 50, (3, 16))
    labels = torch.full_like(input_ids, -100)
    labels[:, [2, 7, 11]] = input_ids[:, [2, 7, 11]]
    reference = model(input_ids=input_ids, labels=labels).loss
    ours = mlm_loss(model, input_ids, labels)
    assert torch.allclose(ours, reference, atol=1e-6)
    ours.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_mlm_loss_rejects_mismatched_shapes():
    model = masked_lm(TINY, vocab_size=50, pad_token_id=0)
    with pytest.raises(ValueError, match="must match"):
        mlm_loss(model, torch.zeros((2, 8), dtype=torch.long), torch.zeros((2, 7), dtype=torch.long))


def test_classifier_has_labels_and_shape():
    model = classifier_from_scratch(TINY, vocab_size=50, pad_token_id=0, labels=["a", "b", "c"])
    logits = model(input_ids=torch.randint(5, 50, (4, 10))).logits
    assert logits.shape == (4, 3)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    model = classifier_from_scratch(TINY, vocab_size=50, pad_token_id=0, labels=["a", "b"]).eval()
    ids = torch.randint(5, 50, (1, 6))
    padded = torch.cat([ids, torch.zeros((1, 4), dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones((1, 6)), torch.zeros((1, 4))], dim=1).long()
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = model(input_ids=padded, attention_mask=mask).logits
    assert torch.allclose(short, long, atol=1e-5)


def test_classifier_loads_the_pretrained_encoder(tmp_path):
    from selfsup.text.model import classifier_from_pretrained, load_classifier

    torch.manual_seed(0)
    mlm = masked_lm(TINY, vocab_size=50, pad_token_id=0)
    mlm.save_pretrained(str(tmp_path / "mlm"))
    clf = classifier_from_pretrained(tmp_path / "mlm", ["a", "b", "c"])
    assert torch.equal(clf.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    assert torch.equal(clf.bert.encoder.layer[0].output.dense.weight, mlm.bert.encoder.layer[0].output.dense.weight)
    clf.save_pretrained(str(tmp_path / "clf"))
    again = load_classifier(tmp_path / "clf")
    assert torch.equal(again.classifier.weight, clf.classifier.weight)
    with pytest.raises(ValueError, match="num_labels must be >= 2"):
        classifier_from_scratch(TINY, 50, 0, ["only"])


def test_saving_and_loading_the_mlm_checkpoint_prints_no_load_report(tmp_path, tiny_tokenizer_dir, capsys, caplog):
    """The MLM head left out and the new classifier head are what fine-tuning expects: no report, no tensor-parallel
    warning and no progress bar in every stage's log."""
    from selfsup.text.model import classifier_from_pretrained, save_model
    from selfsup.text.simcse import load_encoder
    from selfsup.text.tokenizer import load_tokenizer

    save_model(masked_lm(TINY, vocab_size=50, pad_token_id=0), load_tokenizer(tiny_tokenizer_dir), tmp_path / "mlm")
    classifier_from_pretrained(tmp_path / "mlm", ["a", "b"])
    load_encoder(tmp_path / "mlm")
    captured = capsys.readouterr()
    printed = captured.out + captured.err + caplog.text
    for noise in ("LOAD REPORT", "not sharded", "Loading weights", "Writing model shards"):
        assert noise not in printed


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_folder_and_keys(tmp_path):
    from selfsup.text.model import load_classifier

    masked_lm(TINY, vocab_size=50, pad_token_id=0).save_pretrained(str(tmp_path / "mlm"))
    # an MLM checkpoint is not a fine-tuned classifier: its head is missing and the MLM head is left over
    with pytest.raises(ValueError, match=r"mlm: the checkpoint does not fit MeanPoolClassifier: missing "
                                         r"\['classifier.bias', 'classifier.weight'\], unexpected \['cls.predictions"):
        load_classifier(tmp_path / "mlm")
