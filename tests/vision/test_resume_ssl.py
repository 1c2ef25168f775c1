"""Image SSL pretraining resumes from its checkpoints to exactly the uninterrupted result: every method interrupted
in-process, and `selfsup pretrain-ssl` (SimCLR) killed with SIGKILL as a real process.

Tolerance: none, bit-identical encoders (same machine, one thread; see tests/text/test_resume_mlm.py for why that is
the right bar). A resumed run draws the same batches (``pool_batches`` replays its permutations up to the step), the
same augmentations (batched: a generator seeded per step; per image: torch's RNG is restored) and continues the
same optimizer, target/teacher networks, MoCo queue and DINO center; leaving any of these out makes the weights
differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.config import SSLPretrainConfig
from selfsup.tracking import NullTracker
from selfsup.vision.ssl_common import pool_batches
from selfsup.vision.stages import pretrain_ssl

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "tests/fixtures/data/images/manifest.csv"


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    """The 50 real Fashion-MNIST training images of the fixture data."""
    from selfsup.vision.data import load_images

    return load_images(MANIFEST, "train")


def tiny(method: str) -> SSLPretrainConfig:
    # 50 images / 16 per batch = 3 batches per epoch: 7 steps cross two epoch boundaries, one of them after the resume
    cfg = SSLPretrainConfig(method=method, width=4, hidden_dim=16, projection_dim=8, batch_size=16, max_steps=7,
                            warmup_steps=1, queue_size=32, dino_out_dim=32, monitor_every=3, monitor_images=32,
                            min_embedding_std=0.0, min_effective_rank=0.0, checkpoint_every=2)
    cfg.loop.progress = False
    return cfg


class StopAt(NullTracker):
    """Interrupts training when step ``step`` logs its loss, like a kill (no result, no output)."""

    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, metrics, step=None):
        if step == self.step and "train_loss" in metrics:
            raise KeyboardInterrupt


def test_resume_batches_after_a_skip_are_the_uninterrupted_ones(pool):
    whole = list(pool_batches(pool, 16, 7, seed=3))
    assert [torch.equal(a, b) for a, b in zip(whole[4:], pool_batches(pool, 16, 7, seed=3, skip=4), strict=True)] \
        == [True] * 3


@pytest.mark.parametrize("method, batched", [("simclr", True), ("moco", True), ("byol", True), ("simsiam", True),
                                             ("dino", True), ("simclr", False)])
def test_resume_an_interrupted_method_to_the_uninterrupted_encoder(method, batched, pool, tmp_path):
    """Batched augmentation draws from a generator seeded per step; per-image augmentation from torch's restored RNG."""
    cfg = tiny(method)
    cfg.augment.batched = batched
    torch.manual_seed(0)  # what selfsup.runtime.setup does before the stage builds the networks
    straight, straight_result = pretrain_ssl(cfg, pool, torch.device("cpu"), NullTracker(), tmp_path / "a")
    assert not (tmp_path / "a").exists(), "a finished run leaves no checkpoint"

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ssl(cfg, pool, torch.device("cpu"), StopAt(6), tmp_path / "b")
    assert (tmp_path / "b/state.pt").exists()
    torch.manual_seed(0)  # a fresh process seeds and builds the networks again before the checkpoint replaces them
    resumed, resumed_result = pretrain_ssl(cfg, pool, torch.device("cpu"), NullTracker(), tmp_path / "b")

    assert resumed_result.resumed_from == 4
    assert resumed_result.history == straight_result.history and resumed_result.monitor == straight_result.monitor
    expected, got = straight.state_dict(), resumed.state_dict()
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differing, f"{method}: resumed encoder differs in {differing}"


def test_resume_ignores_a_checkpoint_of_another_configuration(pool, tmp_path, capsys):
    cfg = tiny("simclr")
    with pytest.raises(KeyboardInterrupt):
        pretrain_ssl(cfg, pool, torch.device("cpu"), StopAt(3), tmp_path / "c")
    other = dataclasses.replace(cfg, learning_rate=cfg.learning_rate / 2)
    _, result = pretrain_ssl(other, pool, torch.device("cpu"), NullTracker(), tmp_path / "c")
    assert result.resumed_from == 0 and "different configuration" in capsys.readouterr().out


def test_resume_ignores_an_unreadable_checkpoint(pool, tmp_path, capsys):
    """A checkpoint damaged on disk (here: cut in half) is reported and the run starts fresh instead of failing."""
    cfg = tiny("simclr")
    with pytest.raises(KeyboardInterrupt):
        pretrain_ssl(cfg, pool, torch.device("cpu"), StopAt(3), tmp_path / "d")
    state = tmp_path / "d/state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    _, result = pretrain_ssl(cfg, pool, torch.device("cpu"), NullTracker(), tmp_path / "d")
    assert result.resumed_from == 0 and "unreadable checkpoint" in capsys.readouterr().out


def _cli(tmp: Path, name: str) -> list[str]:
    exe = Path(sys.executable).parent / "selfsup"
    return [str(exe), "--params", str(REPO_ROOT / "params.yaml"), "pretrain-ssl", "--checkpoint-dir",
            str(tmp / name / "checkpoint"), *_overrides(tmp, name)]


def _overrides(tmp: Path, name: str) -> list[str]:
    return ["preset=tiny", "tracking.enabled=false", "vision.pretrain.loop.progress=false",
            "vision.pretrain.loop.threads=1", f"vision.data.manifest={MANIFEST}", "vision.pretrain.method=simclr",
            "vision.pretrain.batch_size=16", "vision.pretrain.max_steps=60", "vision.pretrain.checkpoint_every=5",
            "vision.pretrain.monitor_every=20", f"vision.pretrain.out_dir={tmp / name / 'ssl'}",
            f"vision.pretrain.metrics_dir={tmp / name / 'metrics'}"]


@pytest.mark.slow  # two CLI processes and one in-process run: 76 s measured on a loaded 2-core machine
def test_resume_simclr_cli_after_sigkill_gives_the_uninterrupted_encoder(tmp_path):
    from selfsup.config import load_config
    from selfsup.vision.stages import pretrain_stage

    # the reference: the stage function the CLI runs, uninterrupted, in this process
    pretrain_stage(load_config(REPO_ROOT / "params.yaml", _overrides(tmp_path, "straight")),
                   REPO_ROOT / "params.yaml", tmp_path / "straight/checkpoint")

    command = _cli(tmp_path, "killed")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (tmp_path / "killed/checkpoint/state.pt").exists():
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == -signal.SIGKILL, f"finished before the kill landed:\n{output[-3000:]}"
    assert not (tmp_path / "killed/ssl").exists()

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    step = int(re.search(r"resuming pretraining from the checkpoint at step (\d+)", rerun.stdout).group(1))
    assert 5 <= step < 60
    assert json.loads((tmp_path / "killed/metrics/metrics.json").read_text())["resumed_from"] == step
    assert not (tmp_path / "killed/checkpoint").exists()

    expected = torch.load(tmp_path / "straight/ssl/encoder.pt", weights_only=True)["state_dict"]
    got = torch.load(tmp_path / "killed/ssl/encoder.pt", weights_only=True)["state_dict"]
    differing = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not differing, f"resumed encoder differs in {differing}"
    for curve in ("loss.csv", "collapse.csv"):
        assert (tmp_path / "killed/metrics" / curve).read_text() == (tmp_path / "straight/metrics" / curve).read_text()
