"""DVC adapter: the few questions the package asks DVC about ``data.dvc``. Imported lazily by the CLI."""

from __future__ import annotations

from pathlib import Path


def _repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def tracked_is_clean(root: Path, target: str = "data.dvc") -> bool:
    """True when the workspace copy of ``target``'s output hashes to exactly what ``target`` records.

    Compares hashes rather than reading ``dvc status``, which also reports "not in cache" for a matching
    workspace in a fresh clone whose cache is still empty."""
    with _repo(root) as repo:
        (stage,) = repo.stage.collect(target)
        return all(out.exists and out.get_hash() == out.hash_info for out in stage.outs)


def status(root: Path, target: str = "data.dvc") -> dict:
    with _repo(root) as repo:
        return repo.status(targets=[target])


def pull(root: Path, target: str = "data.dvc") -> tuple[bool, str]:
    """Try ``dvc pull target``; return ``(ok, message)`` instead of raising, so callers can fall back."""
    from dvc.exceptions import DvcException

    try:
        with _repo(root) as repo:
            repo.pull(targets=[target])
        return True, "pulled from the DVC remote"
    except DvcException as err:
        reason = " ".join(str(err).split()).rstrip(":") or type(err).__name__  # DVC's message spans lines
        return False, f"dvc pull could not fetch {target}'s data ({reason})"


def commit_to_cache(root: Path, target: str = "data.dvc") -> None:
    """Store the (already matching) workspace data in the DVC cache so ``dvc push`` has it."""
    with _repo(root) as repo:
        repo.commit(target, force=True)


def pipeline_stages(root: Path) -> list[str]:
    """The stages of ``dvc.yaml`` in an order DVC can run them one by one (dependencies first; ties in the order
    they are declared). ``dvc.yaml`` stays the one definition of the pipeline: callers never list stages."""
    import networkx as nx
    from dvc.stage import PipelineStage

    with _repo(root) as repo:
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage)]
        declared = {stage.addressing: i for i, stage in enumerate(stages)}
        graph = repo.index.graph.reverse(copy=True)  # DVC's edges point from a stage to what it depends on
        ordered = nx.lexicographical_topological_sort(graph, key=lambda s: f"{declared.get(s.addressing, -1):06d}")
        return [stage.addressing for stage in ordered if isinstance(stage, PipelineStage)]
