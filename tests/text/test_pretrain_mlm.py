import dataclasses
import json
import math

import pytest

from selfsup.text.pretrain_mlm import pretrain_mlm


@pytest.fixture
def corpus_file(corpus_docs, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"source": s, "id": str(i), "text": t}) + "\n"
                            for i, (s, t) in enumerate(corpus_docs)))
    return path


def _cfg(tiny_config, tmp_path, **changes):
    cfg = dataclasses.replace(tiny_config.pretrain, out_dir=tmp_path / "mlm", max_steps=6, checkpoint_every=3,
                              eval_every=3, source_weights={"tweets": 2.0})
    return dataclasses.replace(cfg, **changes)


class _StopAt:
    """A tracker that interrupts training at a given step, like a killed process."""

    run_id = None

    def __init__(self, step):
        self.step = step

    def log_metrics(self, metrics, step=None):
        if step == self.step and "train_loss" in metrics:
            raise KeyboardInterrupt

    def log_params(self, params):
        return None

    def log_artifact(self, path, artifact_path=None):
        return None

    def set_tags(self, tags):
        return None


def test_pretraining_smoke(tiny_config, tiny_tokenizer_dir, corpus_file, tmp_path):
    cfg = _cfg(tiny_config, tmp_path)
    result = pretrain_mlm(cfg, corpus_file, tiny_tokenizer_dir, tmp_path / "ckpt")
    assert result.steps == 6 and len(result.history) == 6
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert [e["step"] for e in result.evals] == [3, 6]
    assert math.isclose(result.val_perplexity, math.exp(result.val_loss), rel_tol=1e-6)
    assert (tmp_path / "mlm/config.json").exists() and (tmp_path / "mlm/model.safetensors").exists()
    assert (tmp_path / "mlm/tokenizer.json").exists()
    assert not (tmp_path / "ckpt").exists(), "a finished run leaves no checkpoint to resume"


def test_interrupted_run_resumes_to_the_same_result(tiny_config, tiny_tokenizer_dir, corpus_file, tmp_path):
    cfg = _cfg(tiny_config, tmp_path)
    straight = pretrain_mlm(cfg, corpus_file, tiny_tokenizer_dir, tmp_path / "ckpt_a")

    cfg_b = dataclasses.replace(cfg, out_dir=tmp_path / "mlm_b")
    with pytest.raises(KeyboardInterrupt):
        pretrain_mlm(cfg_b, corpus_file, tiny_tokenizer_dir, tmp_path / "ckpt_b", tracker=_StopAt(5))
    assert (tmp_path / "ckpt_b/state.pt").exists(), "the checkpoint of step 3 survives the interruption"
    assert not (tmp_path / "mlm_b").exists(), "no half-written model"
    resumed = pretrain_mlm(cfg_b, corpus_file, tiny_tokenizer_dir, tmp_path / "ckpt_b")
    assert resumed.resumed_from == 3
    # same data order, masking and dropout after the resume: the losses match the uninterrupted run
    assert [round(h["loss"], 5) for h in resumed.history] == [round(h["loss"], 5) for h in straight.history]


def test_checkpoint_of_another_configuration_is_not_resumed(tiny_config, tiny_tokenizer_dir, corpus_file, tmp_path,
                                                             capsys):
    cfg = _cfg(tiny_config, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        pretrain_mlm(cfg, corpus_file, tiny_tokenizer_dir, tmp_path / "ckpt", tracker=_StopAt(4))
    other = dataclasses.replace(cfg, learning_rate=cfg.learning_rate * 2)
    result = pretrain_mlm(other, corpus_file, tiny_tokenizer_dir, tmp_path / "ckpt")
    assert result.resumed_from == 0
    assert "different configuration" in capsys.readouterr().out
