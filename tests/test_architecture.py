"""The layering of docs/architecture.md, checked: no import circles, a core free of I/O, and no arrow
from the serving path to the tooling."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "amira"
IO_LIBRARIES = ("trio", "quart", "quart_trio", "hypercorn", "tritonclient", "onnxruntime", "werkzeug")

# layer -> the AMIRA modules (prefixes) it may import
ALLOWED = {
    "amira.core": ("amira.core",),
    "amira.protocols": ("amira.core", "amira.protocols"),
    "amira.backends": ("amira.core", "amira.backends", "amira.models"),
    "amira.batching": ("amira.core", "amira.backends"),
    "amira.engine": ("amira.core", "amira.backends", "amira.batching", "amira.models", "amira.settings"),
    "amira.stream_session": ("amira.core", "amira.engine"),
    "amira.recognizer": ("amira.core", "amira.engine", "amira.settings", "amira.stream_session"),
}
SERVING = ("amira.core", "amira.protocols", "amira.backends", "amira.batching", "amira.engine",
           "amira.stream_session", "amira.recognizer", "amira.server", "amira.client", "amira.settings",
           "amira.models")  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def amira_imports(path: Path) -> set[str]:
    """Every AMIRA module `path` imports, at any depth of the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "amira" or name.startswith("amira.")}


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        if name == "amira":  # the lazy public API names its submodules only for type checkers
            continue
        graph[name] = {m for m in amira_imports(path) if m in modules and m != name and m != "amira"}
    return graph


def in_layer(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_each_layer_imports_only_the_layers_below() -> None:
    wrong = []
    for module, imported in import_graph().items():
        for layer, allowed in ALLOWED.items():
            if in_layer(module, layer):
                wrong += [f"{module} -> {m}" for m in imported if not any(in_layer(m, ok) for ok in allowed)]
    assert not wrong


def test_the_serving_path_never_imports_the_tooling() -> None:
    wrong = [
        f"{module} -> {m}"
        for module, imported in import_graph().items()
        if any(in_layer(module, s) for s in SERVING)
        for m in imported
        if in_layer(m, "amira.tooling") or in_layer(m, "amira.testing")
    ]
    assert not wrong


def test_importing_the_core_and_the_protocols_loads_no_io_library() -> None:
    """In a fresh interpreter: every module of `amira.core` and `amira.protocols`, then `sys.modules`."""
    modules = sorted(
        module_name(p) for layer in ("core", "protocols") for p in (PACKAGE / layer).glob("*.py")
    )
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & set({IO_LIBRARIES!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 10
    assert json.loads(result.stdout) == []


def test_the_public_api_is_lazy_and_complete() -> None:
    script = (
        "import json, sys, amira\n"
        "before = 'trio' in sys.modules\n"
        "names = {n: type(getattr(amira, n)).__name__ for n in amira.__all__}\n"
        "print(json.dumps([before, names]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    trio_loaded_by_import, names = json.loads(result.stdout)
    assert trio_loaded_by_import is False
    assert set(names) == {
        "Recognizer", "Settings", "Stream", "StreamResult", "Transcript", "open_recognizer", "serve",
        "__version__",
    }  # fmt: skip
