"""The service's model runtime on real tiny exported models."""

import numpy as np


def test_texts_tokenized_by_the_model_swapped_out_are_tokenized_again(tiny_onnx_classifier, corpus_docs, tmp_path):
    """A reload between a request's tokenization and its batch: the new model must not score the old
    tokenizer's ids (a retrained tokenizer numbers its pieces differently)."""
    from conftest import export_tiny_classifier
    from selfsup.serve.runtime import TextModel
    from selfsup.text.tokenizer import save_hf_tokenizer, train_wordpiece

    other_tokenizer = tmp_path / "tok"
    save_hf_tokenizer(train_wordpiece((t for _, t in corpus_docs), vocab_size=300, min_frequency=2), other_tokenizer,
                      model_max_length=64)
    old, new = TextModel(tiny_onnx_classifier), TextModel(export_tiny_classifier(other_tokenizer, tmp_path / "new", 2))
    texts = ["my bag is lost somewhere in Denver", "can I change my flight", "thanks!"]
    stale = old.prepare(texts)
    assert [t.ids for t in stale] != [t.ids for t in new.prepare(texts)], "the two tokenizers must differ"
    for got, want in zip(new.run(stale), new.run(new.prepare(texts))):
        assert np.allclose(got, want)
