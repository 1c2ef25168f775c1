"""Which failures the flows retry: I/O only (the rest would fail the same way again)."""

import sqlite3

import pytest

from flows.common import in_project, is_io_error


def test_only_io_errors_are_retried():
    assert is_io_error(ConnectionError("refused"))
    assert is_io_error(TimeoutError())
    assert is_io_error(sqlite3.OperationalError("database is locked"))
    wrapped = RuntimeError("registry call failed")
    wrapped.__cause__ = OSError("disk full")
    assert is_io_error(wrapped)
    assert not is_io_error(ValueError("bad label"))
    assert not is_io_error(sqlite3.OperationalError("no such column: x"))  # a bug, not a transient failure
    assert not is_io_error(None)


def test_in_project_refuses_a_folder_without_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a selfsup project"):
        with in_project(tmp_path):
            pass
