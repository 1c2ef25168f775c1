"""benchmarks/pipeline.py on a tiny real DVC project: two stages timed from DVC's own output, then a no-op rerun."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DVC_YAML = """stages:
  first:
    cmd: python -c "import time; time.sleep(1.5); open('out/a.txt', 'w').write('a')"
    deps: [data/input.txt]
    outs: [out/a.txt]
  second:
    cmd: python -c "open('out/b.txt', 'w').write(open('out/a.txt').read() + 'b')"
    deps: [out/a.txt]
    outs: [out/b.txt]
"""


def test_pipeline_benchmark_times_each_stage_and_the_noop_rerun(tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "out").mkdir()
    (project / "out" / ".gitkeep").write_text("")
    (project / "data" / "input.txt").write_text("x")
    (project / "dvc.yaml").write_text(DVC_YAML)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=project, check=True)

    result = subprocess.run([sys.executable, str(REPO / "benchmarks/pipeline.py"), "--source", str(project)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["stages"]) == {"first", "second"}
    assert summary["stages"]["first"] >= 1.5  # the stage's own sleep is inside its time
    assert summary["full_s"] >= sum(summary["stages"].values()) - 0.5
    assert 0 < summary["noop_s"] < summary["full_s"]
