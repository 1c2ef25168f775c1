"""Replacing an output folder never leaves the project without one: not after a failure, not after a hard crash."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import selfsup.fileio
from selfsup.fileio import replace_dir, staging_dir


def _model(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_text(content)
    return folder


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir())


def test_a_normal_swap_leaves_only_the_new_folder(tmp_path):
    target = _model(tmp_path / "models" / "intent", "v1")
    staging = _model(staging_dir(target), "v2")
    replace_dir(staging, target)
    assert (target / "model.onnx").read_text() == "v2"
    assert _siblings(target) == ["intent"]  # no intent.old, no intent.tmp


def test_a_first_swap_needs_no_previous_folder(tmp_path):
    target = tmp_path / "models" / "intent"
    replace_dir(_model(staging_dir(target), "v1"), target)
    assert (target / "model.onnx").read_text() == "v1" and _siblings(target) == ["intent"]


def test_a_failure_between_the_renames_keeps_the_previous_folder(tmp_path, monkeypatch):
    target = _model(tmp_path / "models" / "intent", "v1")
    staging = _model(staging_dir(target), "v2")
    real_replace = os.replace

    def failing_move_in(src, dst):
        if Path(src) == staging:  # the rename that moves the new folder in
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_move_in)
    with pytest.raises(OSError, match="No space left"):
        replace_dir(staging, target)
    assert (target / "model.onnx").read_text() == "v1", "the previous model folder was lost"
    assert not target.with_name("intent.old").exists()


def test_a_hard_crash_between_the_renames_is_undone_by_the_next_call(tmp_path):
    """The process dies (no ``except``, no ``finally``) right after the old folder moved aside: the next stage
    that builds the same target gets the previous folder back before it starts."""
    target = _model(tmp_path / "models" / "intent", "v1")
    staging = _model(staging_dir(target), "v2")
    crash = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from selfsup.fileio import replace_dir\n"
        "real = os.replace\n"
        "def replace(src, dst):\n"
        f"    if Path(src) == Path({str(staging)!r}):\n"
        "        os._exit(9)\n"
        "    real(src, dst)\n"
        "os.replace = replace\n"
        f"replace_dir(Path({str(staging)!r}), Path({str(target)!r}))\n"
    )
    src = str(Path(selfsup.fileio.__file__).parents[1])  # the package under test, wherever it is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, env=env)
    assert result.returncode == 9, result.stderr
    assert (target / "model.onnx").exists() or (target.with_name("intent.old") / "model.onnx").exists(), \
        "the crash left no copy of the previous model folder at all"
    staging_dir(target)
    assert (target / "model.onnx").read_text() == "v1"
    assert _siblings(target) == ["intent", "intent.tmp"]


def test_a_leftover_old_folder_beside_the_target_is_removed(tmp_path):
    """A crash while deleting the old folder, after the new one moved in: the next call cleans up."""
    target = _model(tmp_path / "models" / "intent", "v2")
    _model(target.with_name("intent.old"), "v1")
    replace_dir(_model(staging_dir(target), "v3"), target)
    assert (target / "model.onnx").read_text() == "v3" and _siblings(target) == ["intent"]
