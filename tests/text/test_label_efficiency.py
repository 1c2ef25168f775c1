"""The label-efficiency grid's arithmetic (epochs per share, the summary and its error ratios) and one real run of
the three arms on the committed fixture slice with the tiny preset's model."""

import dataclasses
import json
import shutil

import pytest

from selfsup.text.label_efficiency import ARMS, measure, plot, run_epochs, summarize, validation_interval


def test_a_smaller_label_set_gets_more_epochs_for_the_same_steps():
    # full: 1,000 examples x 3 epochs in batches of 32 = 96 steps
    assert run_epochs(1000, 1000, 32, 3, 0) == 3
    assert run_epochs(1000, 100, 32, 3, 0) == 24  # 96 steps / 4 batches
    assert run_epochs(1000, 100, 32, 3, 40) == 10  # capped at 40 steps
    assert run_epochs(1000, 5000, 32, 3, 0) == 1  # never fewer than one epoch


def test_a_run_of_many_short_epochs_validates_about_twenty_times():
    assert validation_interval(10, 10) == 1 and validation_interval(17, 3) == 1  # short runs: every epoch
    assert validation_interval(910, 10) == 46  # 1 % of intent: one batch per epoch -> 20 validations, not 910
    assert validation_interval(60, 30) == 2  # never fewer validations than the committed epochs (30)


def _rows(task, fraction, scores, labels):
    return [{"task": task, "fraction": fraction, "seed": seed, "labels": labels, "epochs": 1, "arm": arm,
             "accuracy": 0.0, "macro_f1": value}
            for arm, values in scores.items() for seed, value in zip((1, 2), values)]


def test_summary_has_mean_std_and_error_ratios(tmp_path):
    rows = _rows("intent", 0.1, {"pretrained": [0.6, 0.8], "scratch": [0.4, 0.4], "classical": [0.5, 0.7]}, 50)
    rows += _rows("intent", 1.0, {"pretrained": [0.9], "scratch": [0.8], "classical": [0.95]}, 500)
    summary = summarize(rows)
    share = summary["intent"]["0.1"]
    assert share["pretrained"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.1414, abs=1e-4), "runs": 2}
    assert share["error_ratio_scratch"] == pytest.approx(0.6 / 0.3)  # scratch makes twice the errors
    assert share["error_ratio_classical"] == pytest.approx(0.4 / 0.3)
    full = summary["intent"]["1"]
    assert full["pretrained"]["std"] == 0.0 and full["labels"] == 500
    assert full["error_ratio_classical"] == pytest.approx(0.05 / 0.1)  # below 1: the classical arm is ahead
    plot(summary, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 5_000


def test_three_arms_train_on_a_share_of_the_labels(fixture_data, tiny_config, tiny_tokenizer_dir, tmp_path):
    """A real run on the fixture slice: a 6-step tiny MLM encoder, 2 shares x 2 seeds, 4 steps per run."""
    from selfsup.config import load_config
    from selfsup.text.pretrain_mlm import pretrain_mlm

    from conftest import REPO_ROOT

    pretrain_mlm(dataclasses.replace(tiny_config.pretrain, out_dir=tmp_path / "mlm"),
                 fixture_data / "corpus/unlabeled.jsonl", tiny_tokenizer_dir, tmp_path / "ckpt")
    shutil.copytree(fixture_data / "intent", tmp_path / "intent")
    cfg = load_config(REPO_ROOT / "params.yaml", [
        "preset=tiny", "tracking.enabled=false", "finetune.loop.progress=false", "finetune.loop.threads=1",
        f"data.tasks.intent.dir={tmp_path / 'intent'}", f"data.corpus={fixture_data / 'corpus/unlabeled.jsonl'}",
        f"tokenizer.out_dir={tiny_tokenizer_dir}",
        f"pretrain.out_dir={tmp_path / 'mlm'}", "finetune.tasks.intent.max_train_examples=0"])
    evaluated = {"intent": {arm: {"accuracy": 0.5, "macro_f1": 0.4} for arm in ARMS}}
    rows = measure(cfg, ["intent"], [0.5, 1.0], [cfg.finetune.loop.seed, 7], 4, evaluated, log=lambda _: None)
    assert len(rows) == 2 * 2 * 3
    assert {r["labels"] for r in rows if r["fraction"] == 0.5} == {24}  # half of the 48 fixture training examples
    # the share 1.0 at the pipeline's seed is the evaluate stage's, not retrained
    reused = [r for r in rows if r["fraction"] == 1.0 and r["seed"] == cfg.finetune.loop.seed]
    assert [r["macro_f1"] for r in reused] == [0.4, 0.4, 0.4]
    retrained = [r for r in rows if r not in reused]
    assert all(0.0 <= r["macro_f1"] <= 1.0 for r in retrained) and len(retrained) == 9
    json.dumps(summarize(rows))  # the summary is plain JSON
