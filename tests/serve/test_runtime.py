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


def test_a_small_call_runs_on_one_thread_and_gives_the_same_probabilities(tiny_onnx_classifier):
    """With several intra-op threads, a call of at most SINGLE_THREAD_MAX_TOKENS padded tokens (a lone request) takes
    the one-thread session of the same model; larger calls keep all the threads; both score alike."""
    from selfsup.serve.runtime import SINGLE_THREAD_MAX_TOKENS, TextModel

    def threads(session) -> int:
        return session.get_session_options().intra_op_num_threads

    two = TextModel(tiny_onnx_classifier, intra_op_threads=2)
    assert threads(two.session_for(1, SINGLE_THREAD_MAX_TOKENS)) == 1
    assert threads(two.session_for(2, SINGLE_THREAD_MAX_TOKENS // 2 + 1)) == 2
    assert threads(two.session_for(8, 30)) == 2
    one = TextModel(tiny_onnx_classifier, intra_op_threads=1)
    assert one.one_thread_session is None and threads(one.session_for(1, 5)) == 1

    texts = ["my bag is lost somewhere in Denver", "can I change my flight", "thanks!"] * 4
    singles = [two.run(two.prepare([text]))[0] for text in texts]  # one-thread calls
    together = two.run(two.prepare(texts))  # one call over the threshold
    for a, b, c in zip(singles, together, one.run(one.prepare(texts))):
        assert np.allclose(a, b, atol=1e-6) and np.allclose(b, c, atol=1e-6)
