"""No ``torch.load`` in the project's code unpickles arbitrary objects: every call passes ``weights_only=True``, so a
checkpoint or model file from elsewhere cannot run code when it is loaded. Parsed (not grepped), so calls spread
over several lines, aliases (``import torch as th``, ``from torch import load``) and ``torch.serialization.load`` are
found."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "flows")


def unsafe_torch_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of every torch load call in ``source`` without a literal ``weights_only=True``."""
    tree = ast.parse(source, filename)
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname or a.name for a in node.names if a.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}

    def is_torch_load(func: ast.expr) -> bool:
        if isinstance(func, ast.Name):
            return func.id in load_names
        if not (isinstance(func, ast.Attribute) and func.attr == "load"):
            return False
        owner = func.value
        if isinstance(owner, ast.Attribute) and owner.attr == "serialization":  # torch.serialization.load
            owner = owner.value
        return isinstance(owner, ast.Name) and owner.id in torch_names

    unsafe = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_torch_load(node.func):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                unsafe.append(f"{filename}:{node.lineno}")
    return unsafe


def test_fault_no_torch_load_without_weights_only_in_the_code():
    files = [p for folder in SCANNED for p in sorted((REPO_ROOT / folder).rglob("*.py"))]
    assert len(files) > 20, "the scan found (almost) no source files"
    unsafe = [hit for p in files for hit in unsafe_torch_loads(p.read_text(), str(p.relative_to(REPO_ROOT)))]
    assert not unsafe, f"torch.load without weights_only=True (can execute code from the file): {unsafe}"


@pytest.mark.parametrize(("source", "found"), [
    ("import torch\ntorch.load(p, weights_only=True)\n", 0),
    ("import torch\ntorch.load(p)\n", 1),
    ("import torch\ntorch.load(\n    p,\n    map_location='cpu',\n    weights_only=False,\n)\n", 1),
    ("import torch as th\nth.load(p, map_location='cpu')\n", 1),
    ("from torch import load\nload(p)\n", 1),
    ("from torch import load as tl\ntl(p, weights_only=True)\n", 0),
    ("import torch\ntorch.serialization.load(p)\n", 1),
    ("import torch\nflag = True\ntorch.load(p, weights_only=flag)\n", 1),  # not provably True
    ("import json\njson.load(f)\nimport numpy as np\nnp.load(p)\n", 0),
])
def test_fault_the_scan_finds_unsafe_loads(source, found):
    assert len(unsafe_torch_loads(source)) == found
