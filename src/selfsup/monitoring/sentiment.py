"""Sentiment monitoring of scored inbox batches: the negative-surge rule, the per-batch history it is judged
against, per-segment shares, and the trend plot and report a person reads. Pure logic: the Prefect flow
(``flows/monitoring.py``) scores the batches and calls these; ``inbox.py`` handles the batch files.

Negative-surge rule. For a batch with n texts of which k are predicted negative, p = k/n. The baseline is the last
``window`` earlier batches that were not themselves surges (a surge must not raise the bar for the next one);
p0 = their pooled negative share. The batch is a surge when, with at least ``min_baseline_batches`` baseline
batches,

    z = (p - p0) / sqrt(p0 (1 - p0) / n)  >=  z_threshold      (one-sided test of one proportion against p0)
    and  p - p0 >= min_increase                                (large enough to matter, not only significant)
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from selfsup.config import MonitorConfig
from selfsup.fileio import write_text_atomic
from selfsup.monitoring.inbox import write_csv

HISTORY_FIELDS = ("batch", "scored_at", "rows", "negative", "share", "baseline_share", "baseline_batches", "z",
                  "surge", "model_version", "segments")


@dataclass
class SurgeCheck:
    share: float
    baseline_share: float | None
    baseline_batches: int
    z: float | None
    surge: bool
    explanation: str


def check_surge(history: list[dict], negatives: int, rows: int, cfg: MonitorConfig) -> SurgeCheck:
    """Apply the negative-surge rule (module docstring) to one batch against the earlier ``history`` rows."""
    if rows <= 0 or not 0 <= negatives <= rows:
        raise ValueError(f"need 0 <= negatives <= rows and rows > 0, got negatives={negatives}, rows={rows}")
    share = negatives / rows
    baseline = [h for h in history if not _truthy(h["surge"])][-cfg.window:]
    if len(baseline) < cfg.min_baseline_batches:
        return SurgeCheck(share, None, len(baseline), None, False,
                          f"warming up: {len(baseline)} of {cfg.min_baseline_batches} baseline batches")
    p0 = sum(int(h["negative"]) for h in baseline) / sum(int(h["rows"]) for h in baseline)
    variance = p0 * (1 - p0) / rows
    z = (share - p0) / math.sqrt(variance) if variance > 0 else (math.inf if share > p0 else 0.0)
    surge = z >= cfg.z_threshold and share - p0 >= cfg.min_increase
    explanation = (f"negative share {share:.1%} vs baseline {p0:.1%} over {len(baseline)} batches: "
                   f"+{share - p0:.1%}, z = {z:.2f} ({'>=' if z >= cfg.z_threshold else '<'} {cfg.z_threshold}; "
                   f"increase {'>=' if share - p0 >= cfg.min_increase else '<'} {cfg.min_increase:.0%})")
    return SurgeCheck(share, p0, len(baseline), z, surge, explanation)


def _truthy(value) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def segment_shares(segments: list[str | None], labels: list[str], negative_label: str) -> dict[str, dict]:
    """Per segment (topic/source): rows and negative share."""
    out: dict[str, dict] = {}
    for segment, label in zip(segments, labels):
        if segment is None:
            continue
        entry = out.setdefault(segment, {"rows": 0, "negative": 0})
        entry["rows"] += 1
        entry["negative"] += label == negative_label
    for entry in out.values():
        entry["share"] = entry["negative"] / entry["rows"]
    return out


def read_history(state_dir: Path) -> list[dict]:
    path = Path(state_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def append_history(state_dir: Path, row: dict) -> list[dict]:
    """Append one batch's row (rewriting the file atomically, so a crash never leaves half a history)."""
    rows = [*read_history(state_dir), {k: row.get(k, "") for k in HISTORY_FIELDS}]
    write_csv(Path(state_dir) / "history.csv", rows, list(HISTORY_FIELDS))
    return rows


def history_row(batch: str, check: SurgeCheck, rows: int, negatives: int, model_version: int,
                segments: dict[str, dict]) -> dict:
    return {"batch": batch, "scored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
            "negative": negatives, "share": f"{check.share:.6f}",
            "baseline_share": "" if check.baseline_share is None else f"{check.baseline_share:.6f}",
            "baseline_batches": check.baseline_batches, "z": "" if check.z is None else f"{check.z:.4f}",
            "surge": check.surge, "model_version": model_version, "segments": json.dumps(segments, sort_keys=True)}


def plot_trend(history: list[dict], path: Path, cfg: MonitorConfig) -> Path:
    """Negative share per batch, the rolling baseline it was judged against, and the surges (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, len(history) + 1))
    share = [float(h["share"]) for h in history]
    baseline = [float(h["baseline_share"]) if h["baseline_share"] not in ("", None) else math.nan for h in history]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(x, share, "o-", color="tab:blue", label=f"{cfg.negative_label} share of the batch")
    ax.plot(x, baseline, "--", color="tab:gray", label=f"rolling baseline (last {cfg.window} non-surge batches)")
    surges = [(i, s) for i, s, h in zip(x, share, history) if _truthy(h["surge"])]
    if surges:
        ax.scatter(*zip(*surges), s=120, facecolors="none", edgecolors="red", linewidths=2, label="surge (alert)",
                   zorder=3)
    ax.set_xlabel("batch (arrival order)")
    ax.set_ylabel(f"{cfg.negative_label} share")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.set_xticklabels([h["batch"] for h in history], rotation=45, ha="right", fontsize=7)
    ax.set_title(f"{cfg.task} monitoring: z >= {cfg.z_threshold} and +{cfg.min_increase:.0%} over the baseline")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(history: list[dict], quarantined: list[dict], path: Path, cfg: MonitorConfig) -> Path:
    lines = [f"# {cfg.task} monitoring report", "",
             f"Rule: surge when z = (p - p0) / sqrt(p0(1-p0)/n) >= {cfg.z_threshold} and p - p0 >= "
             f"{cfg.min_increase:.0%}, p0 = pooled {cfg.negative_label} share of the last {cfg.window} non-surge "
             f"batches (at least {cfg.min_baseline_batches}).", "",
             "| batch | rows | share | baseline | z | surge | model | segments |", "|---|---|---|---|---|---|---|---|"]
    for h in history:
        segments = json.loads(h["segments"] or "{}")
        seg = ", ".join(f"{k} {v['share']:.0%} ({v['rows']})" for k, v in sorted(segments.items()))
        baseline = f"{float(h['baseline_share']):.1%}" if h["baseline_share"] else "-"
        lines.append(f"| {h['batch']} | {h['rows']} | {float(h['share']):.1%} | {baseline} | {h['z'] or '-'} | "
                     f"{'**SURGE**' if _truthy(h['surge']) else ''} | v{h['model_version']} | {seg} |")
    if quarantined:
        lines += ["", "## Quarantined in this run", ""]
        lines += [f"- {q['batch']}: {q['reason']}" for q in quarantined]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path

