"""The flows image's command against a real Prefect server: it is a worker of a `process` work pool, and the pool
the stack's deployments target is the one it creates and polls."""

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.background import clean_env
from deploy.dockerfiles import exec_form, stages

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a real Prefect server (the session's, ~10-30 s) and one worker polling cycle (~10 s)
def test_the_flows_image_command_is_a_process_pool_worker(prefect_api, tmp_path):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    command = exec_form(stages(REPO / "docker" / "flows.Dockerfile")[-1].last("CMD"))
    pool_name = command[command.index("--pool") + 1]
    command[0] = str(Path(sys.executable).parent / command[0])  # this venv's prefect
    env = clean_env(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path / "prefect-home"))
    # one polling cycle instead of polling forever; everything else as the container runs it
    result = subprocess.run([*command, "--run-once"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(pool_name)
        workers = client.read_workers_for_work_pool(pool_name)
    assert pool.type == "process"
    assert len(workers) == 1  # it registered itself with the server while it polled
