"""An ONNX export killed with SIGKILL at the worst moments never leaves a half-written model where a later stage or
the service would load it.

A real process runs the real export (``selfsup.text.export.export_classifier``, through conftest's
``export_tiny_classifier``) over a folder that already holds a previous export. A hook in that process makes the
moment deterministic: it writes a marker and sleeps, and the test kills the process with SIGKILL (no ``except``, no
``finally``, no ``atexit`` runs). The moments:

* ``writing``        — the staging folder holds ``model.onnx`` but not yet the tokenizer, labels or export.json;
* ``before_swap``    — the staging folder is complete, ``replace_dir`` is about to swap it in;
* ``between_renames``— the previous folder was moved aside to ``<target>.old``, the new one not yet moved in (the
  one instant without a folder at the target; ``selfsup.fileio`` moves it back before anything else builds there).

Each time the target is the previous export byte for byte and loads, or (between the renames) is absent and the
loader says so; the half-written staging folder is refused by ``selfsup.serve.runtime.load_model``; a rerun of the
export completes and leaves nothing else behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfsup.fileio import recover_dir
from selfsup.serve.runtime import ModelLoadError, load_model

TESTS = Path(__file__).resolve().parent

HOOKED_EXPORT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import export_tiny_classifier
import selfsup.fileio as fileio
import selfsup.text.export as export_module

moment, marker, tokenizer, target = sys.argv[1:5]

def pause():
    Path(marker).write_text(moment)
    time.sleep(600)  # the test kills us here

if moment == "writing":
    real_fuse = export_module.fuse_for_onnxruntime
    def fuse(path):
        fused = real_fuse(path)
        pause()
        return fused
    export_module.fuse_for_onnxruntime = fuse
elif moment == "before_swap":
    fileio.replace_dir = lambda staging, target: pause()
elif moment == "between_renames":
    real_replace = os.replace
    def replace(src, dst):
        if Path(src).name.endswith(".tmp"):  # the previous folder is already aside: move the new one in
            pause()
        real_replace(src, dst)
    os.replace = replace

export_tiny_classifier(Path(tokenizer), Path(target), seed=2)
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _kill_export_at(moment: str, tokenizer_dir: Path, target: Path) -> None:
    marker = target.parents[2] / f"paused-{moment}"  # outside models/, whose listing the tests check
    script = HOOKED_EXPORT.format(tests=str(TESTS))
    process = subprocess.Popen([sys.executable, "-c", script, moment, str(marker), str(tokenizer_dir), str(target)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, f"the export ended before {moment}:\n{process.stdout.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, f"the export never reached {moment}"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.fixture
def previous_export(tiny_onnx_classifier, tmp_path) -> Path:
    """models/onnx/intent holding a finished export (a copy of the session's tiny one)."""
    target = tmp_path / "models/onnx/intent"
    shutil.copytree(tiny_onnx_classifier, target)
    return target


@pytest.mark.parametrize("moment", ["writing", "before_swap"])
def test_fault_export_killed_before_the_swap_keeps_the_previous_model(moment, previous_export, tiny_tokenizer_dir):
    target = previous_export
    before = _digest(target)
    _kill_export_at(moment, tiny_tokenizer_dir, target)

    assert _digest(target) == before, "the previous export changed"
    assert load_model(target).labels == ["baggage", "booking", "delay", "other"]
    staging = target.with_name("intent.tmp")
    assert (staging / "model.onnx").exists(), "the kill came after the new graph was written"
    if moment == "writing":
        assert not (staging / "export.json").exists()
        with pytest.raises(ModelLoadError, match="intent.tmp"):
            load_model(staging)  # half-written: refused


def test_fault_export_killed_between_the_renames_loses_nothing(previous_export, tiny_tokenizer_dir):
    target = previous_export
    before = _digest(target)
    _kill_export_at("between_renames", tiny_tokenizer_dir, target)

    old = target.with_name("intent.old")
    assert not target.exists() and _digest(old) == before, "the previous export must be whole, aside"
    with pytest.raises(ModelLoadError, match="no model.onnx"):
        load_model(target)  # absent, not half-written: the loader says so
    recover_dir(target)  # what the next staging_dir / replace_dir of this target does first
    assert _digest(target) == before and not old.exists()
    load_model(target)


def test_fault_loader_refuses_a_truncated_model(previous_export):
    """What a non-atomic writer would leave: the graph cut off mid-file."""
    graph = previous_export / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        load_model(previous_export)


@pytest.mark.slow  # one killed export and one full export: ~60 s on a loaded 2-core machine
def test_fault_export_rerun_after_a_kill_replaces_the_model_and_cleans_up(previous_export, tiny_tokenizer_dir):
    from conftest import export_tiny_classifier

    target = previous_export
    before = _digest(target)
    _kill_export_at("writing", tiny_tokenizer_dir, target)
    export_tiny_classifier(tiny_tokenizer_dir, target, seed=2)
    assert _digest(target)["model.onnx"] != before["model.onnx"]  # seed 2's weights, not seed 1's
    load_model(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["intent", "intent.torch"]  # no .tmp, no .old
