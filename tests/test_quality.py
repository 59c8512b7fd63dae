"""The package's own standards: strict typing and a clean lint, checked with the tests."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_mypy_strict_on_src() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_on_everything() -> None:
    """src/ with every rule; tests, benchmarks and examples with the few ignores commented."""
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import lastcall; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    outside = {
        name.split(".")[0]
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("lastcall")
    }
    assert outside == set()
    # Nor anything else: each public name is imported on first use (benchmarks/core.py,
    # figure c, has a budget of 3 ms over a bare interpreter).
    assert loaded == ["lastcall"]


def test_install_imports_neither_typing_nor_asyncio() -> None:
    """What a stop needs is imported at install(), but not the costly modules it does not:
    each module reads typing's names under a TYPE_CHECKING of its own."""
    code = "import sys; import lastcall; lastcall.install(); print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"typing", "asyncio", "json"} & set(loaded) == set()


def core_imports() -> dict[str, set[str]]:
    """Which core modules (``src/lastcall/_*.py``) each one imports: at run time, inside a
    function, or for type checking only; the circles a reader would have to untangle."""
    package = ROOT / "src" / "lastcall"
    core = {path.stem for path in package.glob("_*.py") if path.stem != "__main__"}
    graph: dict[str, set[str]] = {}
    for name in sorted(core):
        imported: set[str] = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "lastcall":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lastcall."):
                imported.add((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                imported |= {
                    a.name.split(".")[1]
                    for a in node.names
                    if a.name.count(".") >= 1 and a.name.startswith("lastcall.")
                }
        graph[name] = (imported & core) - {name}
    return graph


def test_core_imports_form_no_circle() -> None:
    """Dependencies point one way, from the coordinator down to its parts."""
    graph = core_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circle = " -> ".join([*path[path.index(name) :], name])
            raise AssertionError(f"import circle: {circle}")
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, [*path, name])
            done.add(name)

    for name in graph:
        visit(name, [])
    assert {"_coordinator", "_stop", "_triggers", "_ending", "_registry"} <= set(graph)
