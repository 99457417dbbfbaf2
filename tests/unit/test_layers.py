"""inpo's layers import downward only, and no module imports itself through others: read
from the source with `ast` (every `import` and `from ... import`, at any depth, except
under `if TYPE_CHECKING:`). The order is the one docs/contributing.md states."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import inpo

ROOT = Path(inpo.__file__).parent
#: lowest first; a module may import its own layer and the ones before it
LAYERS = [
    {"errors", "durable", "faults", "prompts", "models", "config", "data", "rows", "stages"},
    {"algo"},
    {"plan"},
    {"engines"},
    {"generation", "judging", "learning"},
    {"run"},
    {"cli"},
]


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    modules = {module_of(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in tree.body
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        # `from inpo import faults` names the package (a docstring only) and the module
        graph[name] = {m for m in found if m in modules and m not in (name, "inpo")}
    return graph


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "errors"  # the package: its docstring
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_every_module_is_in_a_layer_and_imports_only_downward():
    graph = imports()
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_no_import_circle_between_modules_or_folders():
    graph = imports()

    def circle(edges: dict[str, set[str]]) -> list[str]:
        state: dict[str, int] = {}  # 1: on the path, 2: done

        def visit(node: str, path: list[str]) -> list[str]:
            state[node] = 1
            for nxt in sorted(edges.get(node, ())):
                if state.get(nxt) == 1:
                    return path + [node, nxt]
                if nxt not in state and (found := visit(nxt, path + [node])):
                    return found
            state[node] = 2
            return []

        return next((c for n in sorted(edges) if n not in state and (c := visit(n, []))), [])

    assert circle(graph) == []

    def folder(module: str) -> str:
        return ".".join(module.split(".")[:2])

    folders: dict[str, set[str]] = {}
    for a, targets in graph.items():
        folders.setdefault(folder(a), set()).update(folder(b) for b in targets)
    for name, targets in folders.items():
        targets.discard(name)
    assert circle(folders) == []


@pytest.mark.parametrize("argv", [["config", "show"], ["plan", "configs/paper_pairpm.yaml"]])
def test_config_show_and_plan_import_no_engine(argv):
    """What keeps them starting in a fraction of a second: none of the heavy libraries."""
    code = (
        "import contextlib, io, sys\n"
        "from inpo.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({argv!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))\n"
    )
    heavy = ["torch", "transformers", "vllm", "deepspeed", "ray", "peft", "safetensors"]
    out = subprocess.run(
        [sys.executable, "-c", code, *heavy], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
