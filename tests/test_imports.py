"""The package's shape: the core imports no launcher library, and no module imports itself in a circle."""

import ast
import graphlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import selfsup

PACKAGE_DIR = Path(selfsup.__file__).parent


def _modules() -> list[str]:
    return ["selfsup", *(m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="selfsup."))]


def test_core_imports_no_launcher_libraries():
    """The core must run where prefect/mlflow/GE/dvc are absent (e.g. the GPU image): importing any module of it
    (adapters aside: they are those libraries' only importers) pulls none of them."""
    core = [m for m in _modules() if not m.startswith("selfsup.adapters")]
    code = ("import importlib, sys\n"
            f"for name in {core!r}: importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'prefect', 'mlflow', 'great_expectations', 'dvc', 'pandas'})\n"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(core) > 40 and result.stdout.strip() == ""


def _imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Every selfsup module ``path`` imports, at the top or inside a function (a lazy import still couples)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(_modules())
    graph = {}
    for module in known:
        rel = module.removeprefix("selfsup").lstrip(".").replace(".", "/")
        path = PACKAGE_DIR / rel / "__init__.py" if (PACKAGE_DIR / rel).is_dir() else PACKAGE_DIR / f"{rel}.py"
        # a package's __init__ is imported with any of its modules; edges to it are not a cycle of their own
        graph[module] = {m for m in _imports_of(path, module, known) if not module.startswith(m + ".")}
    return graph


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_the_cycle_check_finds_a_cycle():
    graph = import_graph()
    graph["selfsup.text.model"] = graph["selfsup.text.model"] | {"selfsup.text.finetune"}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("a cycle text.finetune -> text.model -> text.finetune went unnoticed")
