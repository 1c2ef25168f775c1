"""What `selfsup serve` does to the process before serving (in a child process: it changes process-wide state)."""

import subprocess
import sys

import pytest

CODE = """
import gc
from selfsup.serve.build import settle_heap
frozen_before, default = gc.get_freeze_count(), gc.get_threshold()
settle_heap({threshold})
print(frozen_before, gc.get_freeze_count() > 1000, default, gc.get_threshold())
"""


@pytest.mark.parametrize("threshold,expected", [(12_345, (12_345, 10, 10)), (0, (700, 10, 10))])
def test_settle_heap_freezes_what_is_loaded_and_sets_the_young_threshold(threshold, expected):
    done = subprocess.run([sys.executable, "-c", CODE.format(threshold=threshold)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(None, 2)[:2] == ["0", "True"]  # nothing frozen before; everything imported after
    assert done.stdout.strip().endswith(f"(700, 10, 10) {expected}")
