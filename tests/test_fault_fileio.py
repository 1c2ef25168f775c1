"""Single files and resumable checkpoints survive a SIGKILL at the worst moment: the previous version stays whole and
readable; what the kill leaves is only a temporary name that nothing reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import selfsup.fileio
from selfsup.checkpoint import load_checkpoint, save_checkpoint
from selfsup.fileio import atomic_file, write_json

PACKAGE_ROOT = str(Path(selfsup.fileio.__file__).parents[1])  # the package under test, wherever it is installed


def _killed_at_marker(script: str, marker: Path, *args: str) -> None:
    """Run ``script``, SIGKILL it once it has written ``marker``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", script, str(marker), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def test_fault_file_killed_mid_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from selfsup.fileio import atomic_file\n"
        "with atomic_file(Path(sys.argv[2])) as tmp:\n"
        "    with open(tmp, 'w') as handle:\n"
        "        handle.write('{\"accur')\n"  # half of the new content is on disk
        "        handle.flush()\n"
        "        Path(sys.argv[1]).write_text('paused')\n"
        "        time.sleep(600)\n"
    )
    _killed_at_marker(script, tmp_path / "marker", str(target))
    assert target.read_text() == '{\n "accuracy": 0.9\n}'
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("metrics.json", "marker")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".metrics.json."), leftovers  # a hidden temporary name


def test_fault_file_write_that_raises_leaves_nothing(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            assert tmp.suffix == ".png"  # writers that pick the format by suffix (savefig) get the right one
            tmp.write_bytes(b"half")
            raise RuntimeError("plotting failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


def test_fault_checkpoint_killed_between_the_renames_is_resumed(tmp_path):
    """The checkpoint swap is killed after the previous checkpoint moved aside and before the new one moved in: the
    next run's ``load_checkpoint`` puts the previous one back and resumes from it (nothing lost but the step being
    written)."""
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"fingerprint": "run", "step": 5, "weights": torch.arange(3.0)})
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from selfsup.checkpoint import save_checkpoint\n"
        "real = os.replace\n"
        "def replace(src, dst):\n"
        "    if Path(src).name.endswith('.tmp'):\n"
        "        Path(sys.argv[1]).write_text('paused')\n"
        "        time.sleep(600)\n"
        "    real(src, dst)\n"
        "os.replace = replace\n"
        "save_checkpoint(Path(sys.argv[2]), {'fingerprint': 'run', 'step': 10, 'weights': torch.zeros(3)})\n"
    )
    _killed_at_marker(script, tmp_path / "marker", str(folder))
    assert not folder.exists() and (tmp_path / "checkpoint.old/state.pt").exists(), "the kill landed elsewhere"

    state = load_checkpoint(folder, "run")
    assert state["step"] == 5 and torch.equal(state["weights"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint.tmp", "marker"]
    save_checkpoint(folder, {"fingerprint": "run", "step": 10, "weights": torch.zeros(3)})  # the next save goes on
    assert load_checkpoint(folder, "run")["step"] == 10


def test_fault_checkpoint_holding_code_is_refused(tmp_path, capsys):
    """A state.pt that would run code when unpickled (what ``weights_only=False`` would execute) is not loaded."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    evidence = tmp_path / "code-ran"
    torch.save({"fingerprint": "run", "payload": _RunsCode(evidence)}, folder / "state.pt")
    assert load_checkpoint(folder, "run") is None
    assert "unreadable checkpoint" in capsys.readouterr().out
    assert not evidence.exists()


class _RunsCode:
    """Unpickling it calls ``os.mkdir(path)``: any function could be called the same way."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))
