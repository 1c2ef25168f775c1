"""Pipeline wall time: the full default `dvc repro` from nothing, each stage's share, and a no-op rerun.

    python benchmarks/pipeline.py [--quick] [--keep DIR] [--source DIR]

Runs in a fresh copy of this repository (its committed and untracked-but-not-ignored files, made a git repository
of its own, as a clone is), with this repository's `data/` copied in (run `make data` first) and nothing else: no
models, no DVC cache, no MLflow store. Then:

* `dvc repro` — every stage, timed from DVC's own "Running stage" lines (a stage's time runs from its line to the
  next one, the last to the end of the command; DVC's own bookkeeping between stages is counted in the stage
  before it);
* `dvc repro` again — nothing to do: the time DVC takes to check every dependency.

`--quick` runs the `tiny` preset (seconds per stage: a smoke test of the benchmark itself, not a measurement).
The baseline to read it against is the budget in the issue (≤ 1,200 s full, ≤ 10 s no-op on 2 cores). Ends with
one JSON line: full_s, noop_s, the stages' seconds, device and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def copy_repository(source: Path, dest: Path, preset: str | None) -> None:
    """``source``'s files (tracked, and untracked but not ignored) and its data/, as a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (source / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dest / rel)
    if (source / "data").is_dir():
        shutil.copytree(source / "data", dest / "data", dirs_exist_ok=True)
    if preset:
        params = dest / "params.yaml"
        text, count = re.subn(r"(?m)^preset:.*$", f"preset: {preset}", params.read_text())
        if count != 1:
            raise SystemExit("params.yaml must have exactly one top-level `preset:` line")
        params.write_text(text)
    git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "benchmark copy"]):
        subprocess.run([*git, *command], cwd=dest, check=True)


def timed_repro(repo: Path, log) -> tuple[float, dict[str, float]]:
    """Run `dvc repro` in ``repo``, echoing its output to ``log``; (total seconds, seconds per stage run)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own store, as a newcomer's
    started = time.perf_counter()
    process = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    stages: dict[str, float] = {}
    current, since = None, started
    for line in process.stdout:
        log.write(line)
        found = STAGE_LINE.match(line)
        if found:
            now = time.perf_counter()
            if current is not None:
                stages[current] = now - since
            current, since = found.group(1), now
            print(f"  [{now - started:7.1f} s] {current}", file=sys.stderr, flush=True)
    if process.wait() != 0:
        raise SystemExit(f"dvc repro failed in {repo} (exit {process.returncode}); see the log")
    total = time.perf_counter() - started
    if current is not None:
        stages[current] = total - (since - started)
    return total, stages


def device() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny preset: checks the benchmark runs")
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it, instead of a temporary one")
    parser.add_argument("--source", type=Path, default=REPO, help="the DVC project to time (default: this one)")
    args = parser.parse_args()
    if args.source == REPO and not (REPO / "data" / "corpus").is_dir():
        raise SystemExit(f"{REPO / 'data'} is not materialized: run `make data` first")

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="selfsup-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "repo"
    try:
        copy_repository(args.source.resolve(), repo, "tiny" if args.quick else None)
        with (workdir / "repro.log").open("w") as log:
            print(f"full `dvc repro` in {repo} (log: {workdir / 'repro.log'})", file=sys.stderr)
            full_s, stages = timed_repro(repo, log)
            noop_s, rerun = timed_repro(repo, log)
        if rerun:
            raise SystemExit(f"the second `dvc repro` ran stages {sorted(rerun)}: the pipeline is not reproducible")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'stage':<32} {'seconds':>8} {'share':>6}")
    for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"{name:<32} {seconds:8.1f} {seconds / full_s:6.1%}")
    print(f"{'full dvc repro':<32} {full_s:8.1f}   (budget 1,200 s: {full_s / 1200:.2f}x)")
    print(f"{'no-op dvc repro':<32} {noop_s:8.1f}   (budget 10 s: {noop_s / 10:.2f}x)")
    print(json.dumps({"benchmark": "pipeline", "full_s": round(full_s, 1), "noop_s": round(noop_s, 2),
                      "stages": {k: round(v, 1) for k, v in stages.items()}, "device": device(),
                      "date": datetime.date.today().isoformat(), "quick": args.quick}))


if __name__ == "__main__":
    main()
