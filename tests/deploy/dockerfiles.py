"""Reading the project's Dockerfiles and .dockerignore without a container runtime: the instructions of each build
stage, the files a COPY takes from the build context, and whether .dockerignore leaves them in the context."""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, ...
    args: str  # the rest of the line, continuations joined
    line: int  # where it starts in the file (1-based)


@dataclass
class Stage:
    base: str  # the FROM image (or an earlier stage's name)
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


def instructions(path: Path) -> list[Instruction]:
    """The file's instructions: comments and blank lines dropped, ``\\`` continuations joined (comment lines inside
    a continued instruction are skipped, as Docker does)."""
    result, pending, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending += " " + (stripped[:-1] if continued else stripped)
        if not continued:
            keyword, _, args = pending.strip().partition(" ")
            result.append(Instruction(keyword.upper(), args.strip(), start))
            pending = ""
    if pending:
        raise ValueError(f"{path}: the last instruction (line {start}) ends with a line continuation")
    return result


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        elif not found:
            if instruction.keyword != "ARG":
                raise ValueError(f"{path}:{instruction.line}: {instruction.keyword} before the first FROM")
        else:
            found[-1].instructions.append(instruction)
    return found


def exec_form(instruction: Instruction) -> list[str]:
    """A CMD / ENTRYPOINT / HEALTHCHECK CMD in exec (JSON) form; shell form is refused, so signals reach the process."""
    args = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        args = args[args.index("CMD ") + 4:]
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"line {instruction.line}: {instruction.keyword} is not a JSON list of strings")
    return value


@dataclass
class Copy:
    sources: list[str]  # relative to the build context
    dest: str  # absolute, in the image
    into_folder: bool  # the destination ends with / (or is .): files keep their names inside it
    line: int


def context_copies(stage: Stage) -> list[Copy]:
    """Every COPY/ADD of ``stage`` that takes files from the build context (not ``--from`` another stage or
    image), with its destination made absolute against the WORKDIR in force."""
    workdir, copies = PurePosixPath("/"), []
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        args = instruction.args
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        *sources, dest = paths
        into_folder = dest.endswith("/") or dest == "."
        copies.append(Copy(sources, str(workdir / dest), into_folder, instruction.line))
    return copies


def ignored_patterns(dockerignore: Path) -> list[str]:
    patterns = []
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise ValueError(f"{dockerignore}: exceptions (!) are not used in this project: {line}")
        patterns.append(line.strip("/"))
    return patterns


def is_ignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``rel`` (a path in the context) out: a pattern matching the path or one of the
    folders above it excludes it (Go's filepath.Match, with ``**`` for any number of folders)."""
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], pattern[3:]):
                return True
    return False


def materialize(stage: Stage, context: Path, root: Path) -> Path:
    """Carry out the stage's context COPY instructions into ``root`` standing in for the image's file system
    (``/app`` becomes ``root/app``): the files a container of this stage would hold from the context. Returns the
    stage's last WORKDIR under ``root``."""
    for copy in context_copies(stage):
        dest = root / copy.dest.lstrip("/")
        for source in copy.sources:
            src = context / source
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            else:
                target = dest / src.name if copy.into_folder else dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    workdir = stage.last("WORKDIR")
    return root / (workdir.args.lstrip("/") if workdir else "")
