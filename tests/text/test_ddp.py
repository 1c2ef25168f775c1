"""MLM pretraining under torchrun: two real processes on the CPU (gloo), launched by torch's elastic launcher.

The same global batch (8 sequences, 64 tokens) is trained for six steps by one process and by two processes with
two accumulation micro-batches each (2 sequences per forward, ``no_sync`` on the first). The replicas must end with
bit-identical weights (DDP all-reduces the same averaged gradient into every rank, and each rank then takes the same
optimizer step), and the per-step losses must match the single process's within ``LOSS_TOLERANCE``.

Why a tolerance and not equality: both runs see the same blocks with the same masks (every rank masks the whole
global batch with the single process's RNG; the tiny preset has dropout 0, which draws no random numbers on the CPU),
so the loss is the same quantity; only the floating-point summation order differs (gradients of 2-sequence
micro-batches summed, then all-reduced, instead of one 8-sequence backward; a float64 sum over masked tokens divided
by the global count instead of an fp32 mean). Measured: per-step loss gaps at most 8.4e-7 on losses near 6.0,
weights within 1.2e-7. 1e-4 leaves room for other CPUs' kernels.

AdamW with gradient clipping is blind to a constant factor on the gradient, so the losses alone would not catch a
normalisation off by the number of processes; the worker therefore also backpropagates one fixed batch whose halves
hold different numbers of masked tokens, and its gradient must equal one process's mean-loss gradient (dividing by
an estimated instead of the all-reduced count was measured to fail this check, loss off by 1.6).

This file is also the worker script: torchrun runs it with ``worker`` arguments (see ``_worker``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
LOSS_TOLERANCE = 1e-4  # absolute, on per-step MLM losses of ~6.0 (see the module docstring)
LAUNCH_TIMEOUT_S = 240  # the launch took 20-50 s on a shared 2-core machine; a hang must not block the suite
TINY = ["preset=tiny", "pretrain.loop.progress=false", "tracking.enabled=false", "pretrain.loop.threads=1"]


def _fixed_problem():
    """A tiny MLM and one batch [8, 16] whose halves hold different numbers of selected positions (11 and 20), so
    that averaging per rank instead of over the global batch gives a different gradient."""
    from selfsup.config import ModelConfig
    from selfsup.text.model import masked_lm

    torch.manual_seed(0)
    model = masked_lm(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64,
                                  dropout=0.0), vocab_size=50, pad_token_id=0)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 50, (8, 16), generator=generator)
    labels = torch.full((8, 16), -100)
    for row, count in enumerate((1, 2, 3, 5, 4, 5, 5, 6)):
        labels[row, :count] = input_ids[row, :count]
    return model, input_ids, labels


def _worker(params: str, overrides: list[str], out: str) -> None:
    """One torchrun process. First the gradient of ``_fixed_problem`` through DDP with 2 accumulation micro-batches,
    then the ``selfsup pretrain`` stage function; this rank's gradient, weights and losses go to ``out/rank<R>.pt``
    (the stage saves rank 0's model only; the test needs every replica's)."""
    import torch.distributed as dist

    import selfsup.text.pretrain_mlm as pretrain_module
    from selfsup.config import load_config
    from selfsup.distributed import ranks_from_env
    from selfsup.text.stages import pretrain_stage

    dist.init_process_group("gloo")  # pretrain_mlm uses a group that is already there and leaves it open
    ranks = ranks_from_env()
    model, input_ids, labels = _fixed_problem()
    objective = torch.nn.parallel.DistributedDataParallel(pretrain_module.SummedMLMLoss(model))
    rows = ranks.rows(len(input_ids))
    cfg = dataclasses.replace(load_config(params, overrides).pretrain, accumulation_steps=2)
    fixed_loss = pretrain_module._accumulate_gradients(objective, input_ids[rows], labels[rows], cfg, ranks,
                                                       torch.device("cpu"))
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}

    built = []
    make_model = pretrain_module.masked_lm
    pretrain_module.masked_lm = lambda *args, **kwargs: built.append(make_model(*args, **kwargs)) or built[-1]
    result = pretrain_stage(load_config(params, overrides), Path(params), Path(out) / "checkpoint")
    torch.save({"weights": built[0].state_dict(), "losses": [h["loss"] for h in result.history],
                "evals": result.evals, "fixed_loss": fixed_loss, "gradients": gradients},
               Path(out) / f"rank{ranks.rank}.pt")
    dist.destroy_process_group()


@pytest.fixture
def corpus_file(corpus_docs, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"source": s, "id": str(i), "text": t}) + "\n"
                            for i, (s, t) in enumerate(corpus_docs)))
    return path


@pytest.fixture
def no_torchrun_env(monkeypatch):
    """The pytest process itself is a plain single process, whatever launched pytest."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def _single_process_run(overrides: list[str], corpus_file: Path, tokenizer_dir: Path, out: Path):
    from selfsup.config import load_config
    from selfsup.text.pretrain_mlm import pretrain_mlm
    from safetensors.torch import load_file

    cfg = load_config(REPO_ROOT / "params.yaml", overrides).pretrain
    result = pretrain_mlm(cfg, corpus_file, tokenizer_dir, out / "checkpoint")
    return result, load_file(Path(cfg.out_dir) / "model.safetensors")


@pytest.mark.slow  # two torch processes start and train: 24-53 s measured on a shared 2-core machine
def test_two_gloo_processes_match_one_process(tiny_tokenizer_dir, corpus_file, tmp_path, no_torchrun_env):
    from conftest import free_port

    from selfsup.text.model import mlm_loss

    common = [*TINY, f"data.corpus={corpus_file}", f"tokenizer.out_dir={tiny_tokenizer_dir}"]
    ddp_out = tmp_path / "ddp"
    ddp_out.mkdir()
    ddp_overrides = [*common, f"pretrain.out_dir={ddp_out / 'mlm'}", f"pretrain.metrics_dir={ddp_out / 'metrics'}",
                     "pretrain.accumulation_steps=2"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
              "--master-addr=127.0.0.1", f"--master-port={free_port()}", "--max-restarts=0",
              __file__, "worker", str(REPO_ROOT / "params.yaml"), str(ddp_out), *ddp_overrides]
    done = subprocess.run(launch, cwd=tmp_path, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    single, single_weights = _single_process_run([*common, f"pretrain.out_dir={tmp_path / 'single'}"],
                                                 corpus_file, tiny_tokenizer_dir, tmp_path)
    rank0, rank1 = (torch.load(ddp_out / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # one step's gradient: normalised by the global batch's selected positions, like one process's mean loss
    model, input_ids, labels = _fixed_problem()
    reference_loss = mlm_loss(model, input_ids, labels)
    reference_loss.backward()
    assert abs(rank0["fixed_loss"] - reference_loss.item()) < 1e-5
    for name, parameter in model.named_parameters():
        for rank in (rank0, rank1):
            torch.testing.assert_close(rank["gradients"][name], parameter.grad, rtol=1e-4, atol=1e-7)

    # the replicas: bit-identical weights, and the same (global) loss at every step
    assert rank0["weights"].keys() == rank1["weights"].keys()
    differing = [k for k in rank0["weights"] if not torch.equal(rank0["weights"][k], rank1["weights"][k])]
    assert not differing, f"replicas diverged in {differing}"
    assert rank0["losses"] == rank1["losses"] and len(rank0["losses"]) == 6

    # against one process on the same global batch
    gaps = [abs(a - b) for a, b in zip(rank0["losses"], (h["loss"] for h in single.history), strict=True)]
    assert max(gaps) < LOSS_TOLERANCE, f"per-step loss gaps to the single process: {gaps}"
    val_gaps = [abs(a["val_loss"] - b["val_loss"]) for a, b in zip(rank0["evals"], single.evals, strict=True)]
    assert max(val_gaps) < LOSS_TOLERANCE, f"validation loss gaps: {val_gaps}"
    weight_gap = max((rank0["weights"][k] - single_weights[k]).abs().max().item() for k in single_weights)
    assert weight_gap < 1e-3, f"largest weight difference to the single process {weight_gap}"  # lr 2e-3, 6 steps

    # rank 0 alone saved, wrote the metrics, logged the validation lines, and left no checkpoint behind
    assert (ddp_out / "mlm/model.safetensors").exists() and (ddp_out / "metrics/metrics.json").exists()
    assert output.count("step 6: val MLM loss") == 1, output[-4000:]
    assert not (ddp_out / "checkpoint").exists()


def test_accumulated_micro_batches_match_one_batch(tiny_config, tiny_tokenizer_dir, corpus_file, tmp_path,
                                                   no_torchrun_env):
    """One process, the batch in 4 micro-batches (the summed-loss path without DDP) vs the plain loop."""
    from selfsup.text.pretrain_mlm import pretrain_mlm

    cfg = dataclasses.replace(tiny_config.pretrain, max_steps=3, eval_every=3, out_dir=tmp_path / "plain")
    plain = pretrain_mlm(cfg, corpus_file, tiny_tokenizer_dir, tmp_path / "c1")
    accumulated = pretrain_mlm(dataclasses.replace(cfg, accumulation_steps=4, out_dir=tmp_path / "acc"),
                               corpus_file, tiny_tokenizer_dir, tmp_path / "c2")
    gaps = [abs(a["loss"] - b["loss"]) for a, b in zip(plain.history, accumulated.history, strict=True)]
    assert max(gaps) < LOSS_TOLERANCE, gaps
    assert plain.history[0]["loss"] != plain.history[-1]["loss"]  # it trained: the comparison is not vacuous


def test_how_a_step_is_split_is_not_part_of_the_resume_fingerprint(tiny_config, tiny_tokenizer_dir, corpus_file):
    from selfsup.text.pretrain_mlm import _fingerprint

    cfg = tiny_config.pretrain
    same = _fingerprint(dataclasses.replace(cfg, accumulation_steps=4), tiny_tokenizer_dir, corpus_file)
    assert same == _fingerprint(cfg, tiny_tokenizer_dir, corpus_file)
    other = _fingerprint(dataclasses.replace(cfg, batch_size=cfg.batch_size * 2), tiny_tokenizer_dir, corpus_file)
    assert other != same


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tiny_config, tiny_tokenizer_dir, corpus_file,
                                                                    tmp_path, monkeypatch):
    from selfsup.text.pretrain_mlm import pretrain_mlm

    monkeypatch.setenv("WORLD_SIZE", "3")  # checked before any process group is joined
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"batch_size \(8\) must divide by the number of processes \(3\)"):
        pretrain_mlm(tiny_config.pretrain, corpus_file, tiny_tokenizer_dir, tmp_path / "c")


def test_ranks_from_torchrun_environment():
    from selfsup.distributed import Ranks, ranks_from_env

    assert ranks_from_env({}) == Ranks()
    ranks = ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.is_main, ranks.distributed) == (3, 4, 1, False, True)
    assert [Ranks(rank=r, world_size=4).rows(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6),
                                                                         slice(6, 8)]
    with pytest.raises(ValueError, match="RANK=4 WORLD_SIZE=4"):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2], sys.argv[4:], sys.argv[3])
