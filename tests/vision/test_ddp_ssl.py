"""Image SSL pretraining under torchrun: two real processes on the CPU (gloo), launched by torch's elastic launcher.

Every method trains the same global batch (16 Fashion-MNIST images of the fixture pool, 4 steps crossing an epoch
boundary) once in one process and once in two processes with 8 images each, through ``pretrain_stage`` (what
``selfsup pretrain-ssl`` runs). Checked for every method:

* the replicas end bit-identical: every network the recipe trains or updates (online, target/teacher, MoCo's queue,
  DINO's center, batch-norm running statistics), the last step's gradients, and the logged losses;
* against the single process: per-step losses and every network's state within ``LOSS_TOLERANCE`` /
  ``STATE_TOLERANCE``, and the last step's gradients within ``GRADIENT_RTOL``. The gradient check is what catches a
  loss normalised per rank instead of over the global batch (AdamW is blind to a constant factor on the gradient,
  so losses and weights alone would not); a queue fed with one rank's keys, or a center averaged over one rank,
  shows up in the state check.

Why tolerances and not equality: the images and augmentations are the single process's (every rank augments the
whole global batch with the same RNG and keeps its rows), so only the floating-point summation order differs:
batch-norm statistics from two all-reduces instead of one kernel, losses averaged over ranks, gradients summed by
all-reduce. Measured on this project's 2-core CPU (the test prints it): step-1 gradients within 5.4e-5 of one
process's (relative, per tensor), per-step losses within 8.4e-7 and every state entry within 1.5e-5 for SimCLR, MoCo,
BYOL's losses and DINO. BYOL and SimSiam have one parameter whose gradient is mathematically 0 (the projector's
output bias, cancelled by the predictor's batch norm; numerically ~3e-8 of rounding noise): AdamW turns that noise
into steps of up to the learning rate whose sign is the noise's, differently in each run, so that bias (and the
predictor's running mean after it) differ by up to twice the summed learning rates (measured 2.4e-3), and SimSiam,
whose target contains the bias, has loss gaps up to 7.6e-5 (per-image augmentation) and 5.2e-4 (batched, the
default since 2026-12-03: other views, another draw of that noise). The tolerances leave ~10x room above what was
measured.

A one-process SimCLR checkpoint of step 2 is also resumed by the two processes: rank 0 alone reads it (and says so
once), and the run ends on the uninterrupted run's losses.

This file is also the worker script: torchrun runs it with ``worker`` arguments (see ``_worker``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "tests/fixtures/data/images/manifest.csv"
METHODS = ("simclr", "moco", "byol", "simsiam", "dino")
# absolute, on per-step losses (between -1 and 4) and on every entry of every network's state after 4 steps (weights,
# queue, center, running statistics); BYOL and SimSiam are looser for the reason in the module docstring
LOSS_TOLERANCE = {"simclr": 1e-4, "moco": 1e-4, "byol": 1e-4, "simsiam": 5e-3, "dino": 1e-4}
NOISE_DRIVEN_BOUND = 2 * (2e-3 + 1.71e-3 + 1e-3 + 0.29e-3)  # twice the 4 steps' learning rates (tiny preset: 2e-3)
STATE_TOLERANCE = {"simclr": 1e-4, "moco": 1e-4, "byol": NOISE_DRIVEN_BOUND, "simsiam": NOISE_DRIVEN_BOUND,
                   "dino": 1e-4}
# step 1's gradients: ||difference|| <= RTOL ||one process's|| + ATOL per tensor (ATOL for the tensors whose gradient
# is mathematically 0 and numerically ~3e-8):
# a factor of 2 (one per rank) would be a relative gap of 0.5
GRADIENT_RTOL, GRADIENT_ATOL = 1e-3, 1e-6
LAUNCH_TIMEOUT_S = 300  # the launch took ~40 s on a shared 2-core machine; a hang must not block the suite


def _overrides(out: Path, method: str) -> list[str]:
    return ["preset=tiny", "tracking.enabled=false", "vision.pretrain.loop.progress=false",
            "vision.pretrain.loop.threads=1", f"vision.data.manifest={MANIFEST}", f"vision.pretrain.method={method}",
            "vision.pretrain.batch_size=16", "vision.pretrain.max_steps=4", "vision.pretrain.checkpoint_every=2",
            f"vision.pretrain.out_dir={out / method / 'ssl'}", f"vision.pretrain.metrics_dir={out / method / 'metrics'}"]


def _recording_runs() -> list[dict]:
    """Make the recipes report every network they train or update (the stage saves rank 0's encoder only; the test
    needs every replica's state) and the result; returns the list each run appends ``{"modules", "result"}`` to."""
    from selfsup.vision import contrastive, self_distillation, stages
    from selfsup.vision.ssl_common import SSLCheckpoints

    runs: list[dict] = []

    class RecordingCheckpoints(SSLCheckpoints):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append({"modules": self.modules})

        def after_step(self, step, history, monitor):
            if step == 1:  # called between the optimizer step and the next zero_grad: the gradients are step 1's
                runs[-1]["first_gradients"] = _gradients(self.modules)
            super().after_step(step, history, monitor)

    def recording_pretrain_ssl(*args, **kwargs):
        encoder, result = train(*args, **kwargs)
        runs[-1]["result"] = result
        return encoder, result

    train = stages.pretrain_ssl
    contrastive.SSLCheckpoints = self_distillation.SSLCheckpoints = RecordingCheckpoints
    stages.pretrain_ssl = recording_pretrain_ssl
    return runs


def _gradients(modules: dict) -> dict:
    return {f"{name}.{key}": p.grad.clone() for name, module in modules.items()
            for key, p in module.named_parameters() if p.grad is not None}


def _snapshot(run: dict) -> dict:
    """A run's final state (every module's ``state_dict``), first- and last-step gradients and per-step losses."""
    modules = run["modules"]
    return {
        "state": {f"{name}.{key}": value.detach().clone() for name, module in modules.items()
                  for key, value in module.state_dict().items()},
        "first_gradients": run.get("first_gradients", {}), "gradients": _gradients(modules),
        "losses": [h["loss"] for h in run["result"].history],
        "resumed_from": run["result"].resumed_from,
    }


def _worker(params: str, out: str) -> None:
    """One torchrun process: ``pretrain_stage`` for every method, then the resume of a one-process checkpoint; this
    rank's snapshots go to ``out/rank<R>.pt``."""
    import torch.distributed as dist

    from selfsup.config import load_config
    from selfsup.distributed import ranks_from_env
    from selfsup.vision.stages import pretrain_stage

    dist.init_process_group("gloo")  # pretrain_stage uses a group that is already there and leaves it open
    runs = _recording_runs()
    snapshots, metrics = {}, {}
    for method in METHODS:
        metrics[method] = pretrain_stage(load_config(params, _overrides(Path(out), method)), Path(params),
                                         Path(out) / method / "checkpoint")
        snapshots[method] = _snapshot(runs[-1])
    resume_out = Path(out) / "resumed"
    pretrain_stage(load_config(params, _overrides(resume_out, "simclr")), Path(params),
                   resume_out / "simclr/checkpoint")
    snapshots["resumed"] = _snapshot(runs[-1])
    torch.save({"snapshots": snapshots, "metrics": metrics}, Path(out) / f"rank{ranks_from_env().rank}.pt")
    dist.destroy_process_group()


@pytest.fixture
def no_torchrun_env(monkeypatch):
    """The pytest process itself is a plain single process, whatever launched pytest."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def recorded_runs(monkeypatch):
    """``_recording_runs`` in this process, undone afterwards."""
    from selfsup.vision import contrastive, self_distillation, stages

    for module, name in ((contrastive, "SSLCheckpoints"), (self_distillation, "SSLCheckpoints"),
                         (stages, "pretrain_ssl")):
        monkeypatch.setattr(module, name, getattr(module, name))
    return _recording_runs()


class _StopAfter:
    """A tracker that interrupts training when step ``step`` logs its loss, like a kill."""

    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, metrics, step=None):
        if step == self.step and "train_loss" in metrics:
            raise KeyboardInterrupt


def _interrupted_single_process_checkpoint(out: Path) -> None:
    """What an interrupted ``selfsup pretrain-ssl`` (SimCLR, one process) leaves behind: a checkpoint of step 2."""
    from selfsup.config import load_config
    from selfsup.runtime import setup
    from selfsup.vision.data import load_images
    from selfsup.vision.stages import pretrain_ssl

    cfg = load_config(REPO_ROOT / "params.yaml", _overrides(out, "simclr"))
    device = setup(cfg.vision.pretrain.loop)
    pool = load_images(cfg.vision.data.manifest, cfg.vision.data.pretrain_split, cfg.vision.data.max_pretrain_images)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ssl(cfg.vision.pretrain, pool, device, _StopAfter(3), out / "simclr/checkpoint")
    assert (out / "simclr/checkpoint/state.pt").exists()


def _largest_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow  # one torchrun launch (5 methods + a resume) and 5 one-process runs: ~60 s on a shared 2-core CPU
def test_two_gloo_processes_match_one_process_for_every_method(tmp_path, no_torchrun_env, recorded_runs):
    from conftest import free_port

    from selfsup.config import load_config
    from selfsup.vision.stages import pretrain_stage

    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir()
    _interrupted_single_process_checkpoint(ddp_out / "resumed")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
              "--master-addr=127.0.0.1", f"--master-port={free_port()}", "--max-restarts=0",
              __file__, "worker", str(REPO_ROOT / "params.yaml"), str(ddp_out)]
    done = subprocess.run(launch, cwd=tmp_path, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    rank0, rank1 = (torch.load(ddp_out / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    measured = {}
    for method in METHODS:
        pretrain_stage(load_config(REPO_ROOT / "params.yaml", _overrides(single_out, method)),
                       REPO_ROOT / "params.yaml", single_out / method / "checkpoint")
        single, ddp, other = _snapshot(recorded_runs[-1]), rank0["snapshots"][method], rank1["snapshots"][method]

        # the replicas: bit-identical networks, buffers, gradients and logged losses
        differing = [k for k in ddp["state"] if not torch.equal(ddp["state"][k], other["state"][k])]
        differing += [f"{k} (gradient, step {step})" for step, grads in (("1", "first_gradients"), ("4", "gradients"))
                      for k in ddp[grads] if not torch.equal(ddp[grads][k], other[grads][k])]
        assert not differing, f"{method}: replicas differ in {differing}"
        assert ddp["losses"] == other["losses"] and len(ddp["losses"]) == 4

        # against one process on the same global batch
        loss_gap = max(abs(a - b) for a, b in zip(ddp["losses"], single["losses"], strict=True))
        state_gap = _largest_gap(ddp["state"], single["state"])
        first, expected = ddp["first_gradients"], single["first_gradients"]
        assert first.keys() == expected.keys() and first
        # per tensor, ||difference|| / ||one process's gradient||: elementwise ratios are meaningless where
        # batch-norm's backward cancels large terms into a small element
        gradient_gap = {k: ((first[k] - expected[k]).norm().item(), expected[k].norm().item()) for k in expected}
        measured[method] = {"loss": loss_gap, "state": state_gap,
                            "gradient_rel": max(gap / (norm + GRADIENT_ATOL) for gap, norm in gradient_gap.values())}
        off = {k: gap for k, gap in gradient_gap.items() if gap[0] > GRADIENT_RTOL * gap[1] + GRADIENT_ATOL}
        assert not off, f"{method}: step-1 gradients differ from one process's in {off}; measured {measured}"
        assert loss_gap < LOSS_TOLERANCE[method], f"{method}: per-step loss gaps; measured {measured}"
        assert state_gap < STATE_TOLERANCE[method], f"{method}: state differs; measured {measured}"
        assert single["losses"][0] != single["losses"][-1]  # it trained: the comparison is not vacuous

        # rank 0 alone wrote the outputs and left no checkpoint; rank 1 returned the same numbers
        assert (ddp_out / method / "ssl/encoder.pt").exists() and (ddp_out / method / "metrics/metrics.json").exists()
        assert not (ddp_out / method / "checkpoint").exists()
        same = ("final_loss", "embedding_std", "effective_rank", "steps", "resumed_from")
        assert {k: rank0["metrics"][method][k] for k in same} == {k: rank1["metrics"][method][k] for k in same}
    print("measured gaps to one process:", measured)

    # a one-process checkpoint resumed by two processes: read (and announced) by rank 0 only, same losses
    resumed = rank0["snapshots"]["resumed"]
    assert resumed["resumed_from"] == rank1["snapshots"]["resumed"]["resumed_from"] == 2
    assert output.count("resuming pretraining from the checkpoint at step 2") == 1, output[-4000:]
    straight = rank0["snapshots"]["simclr"]["losses"]
    assert max(abs(a - b) for a, b in zip(resumed["losses"], straight, strict=True)) < LOSS_TOLERANCE["simclr"]
    assert _largest_gap(resumed["state"], rank0["snapshots"]["simclr"]["state"]) < STATE_TOLERANCE["simclr"]


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    from selfsup.config import load_config
    from selfsup.vision.stages import pretrain_stage

    monkeypatch.setenv("WORLD_SIZE", "3")  # checked before any process group is joined
    monkeypatch.setenv("RANK", "0")
    cfg = load_config(REPO_ROOT / "params.yaml", _overrides(tmp_path, "simclr"))
    with pytest.raises(ValueError, match=r"batch_size \(16\) must divide by the number of processes \(3\)"):
        pretrain_stage(cfg, REPO_ROOT / "params.yaml", tmp_path / "checkpoint")


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2], sys.argv[3])
