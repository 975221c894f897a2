"""The package's folders are its layers, and imports only go down (or stay in their folder).

    serve/  lab/          the top: may use everything below (but not each other)
    observe/              read-only views of the engine and of experiments
    load/                 experiments, runs, arrivals, targets
    engine/               the queue, its step loop, schedulers, the recorder
    models/               the model interface and the models
    (root)                the shared vocabulary: requests, sequences, generation options, metrics,
                          prompts, errors, checks

Every import counts, including those inside functions (a lazy import is still a dependency);
`queuelab/__init__.py` and `__main__.py` are the facade over all layers: only the top layers may
import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "queuelab"
RANK = {"": 0, "models": 1, "engine": 2, "load": 3, "observe": 4, "lab": 5, "serve": 5}
FACADE = {"queuelab", "queuelab.__main__"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (annotations only: no import at run time)."""
    return {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
            and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
            for stmt in block.body for n in ast.walk(stmt)}


def imports_of(path: Path, modules: set[str], *, type_only: bool = True, package_dir: Path = PACKAGE) -> set[str]:
    """The queuelab modules `path` imports (absolute or relative), anywhere in the file; with
    `type_only=False`, leaving out those under `if TYPE_CHECKING:`."""
    here = module_name(path, package_dir)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if type_only else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m in modules and m != here}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def graph(*, type_only: bool = True, package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = all_modules(package)
    return {m: imports_of(p, set(modules), type_only=type_only, package_dir=package)
            for m, p in modules.items() if m not in FACADE}


def upward(g: dict[str, set[str]]) -> list[str]:
    """Imports into a folder at the same or a higher layer than the importer's."""
    return sorted(f"{m} -> {d}" for m, deps in g.items() for d in deps - FACADE
                  if folder(m) != folder(d) and RANK[folder(d)] >= RANK[folder(m)])


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def test_every_module_is_in_a_known_layer():
    assert {folder(m) for m in graph()} <= set(RANK)


def test_imports_only_go_down_or_stay_in_their_folder():
    bad = upward(graph())
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_only_the_top_layers_use_the_package_facade():
    # `import queuelab as ql` imports every layer: below the top it would be an upward import.
    offenders = sorted(m for m, deps in graph().items() if deps & FACADE and RANK[folder(m)] < RANK["serve"])
    assert not offenders, f"modules that import queuelab's __init__ (import the module they need): {offenders}"


def test_no_import_cycles():
    # At run time: an annotation-only import (under TYPE_CHECKING) may point back, as errors.py's does.
    found = cycles(graph(type_only=False))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "queuelab"
    for sub, text in {"__init__.py": "", "engine/__init__.py": "", "serve/__init__.py": "",
                      "engine/loop.py": "def f():\n    from queuelab.serve import app\n",
                      "serve/app.py": "from ..engine.loop import f\n",
                      "request.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from queuelab import errors\n",
                      "errors.py": "from queuelab.request import x\n"}.items():
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(text)
    g = graph(package=pkg)
    assert upward(g) == ["queuelab.engine.loop -> queuelab.serve.app"]
    assert cycles(g) == [["queuelab.engine.loop", "queuelab.serve.app", "queuelab.engine.loop"],
                         ["queuelab.errors", "queuelab.request", "queuelab.errors"]]
    assert cycles(graph(package=pkg, type_only=False)) == [
        ["queuelab.engine.loop", "queuelab.serve.app", "queuelab.engine.loop"]]
