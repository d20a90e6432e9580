"""No two runtime modules import each other, directly or through others: every import counts, those inside
functions and under `TYPE_CHECKING` too, so each stage's module can be read (and loaded) after the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module names under `root` (a package's `__init__.py` is the package's name; the root's is "")."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(part for part in parts if part != "__init__")] = path
    return names


def imports(root: Path) -> dict[str, set[str]]:
    """Which modules under `root` each module under `root` imports (relative or as `replyrank.*`)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [part for part in package if part]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name.removeprefix("replyrank").lstrip(".") for alias in node.names if alias.name.startswith("replyrank")]
            elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("replyrank")):
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module.removeprefix("replyrank").lstrip(".")
                found = [f"{base}.{alias.name}".lstrip(".") if f"{base}.{alias.name}".lstrip(".") in modules else base for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in found if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path from its first module back to it."""
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                cycle = path[path.index(target):]
                if sorted(cycle) not in [sorted(c) for c in found]:
                    found.append(cycle)
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    return found


def test_the_runtime_has_no_import_cycle() -> None:
    graph = imports(RUNTIME)
    assert {"bundle", "options", "sampling", "kv_cache", "generate"} <= set(graph)
    assert "options" in graph["bundle"] and "generate" not in graph["bundle"]
    assert not cycles(graph), cycles(graph)


def test_the_reader_finds_a_cycle_through_type_checking_and_a_function(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (tmp_path / "b.py").write_text("def f():\n    from .sub.c import C\n")
    (tmp_path / "sub" / "c.py").write_text("from ..a import A\nimport numpy\n")
    (tmp_path / "d.py").write_text("import replyrank.a\n")
    graph = imports(tmp_path)
    assert graph == {"a": {"b"}, "b": {"sub.c"}, "sub.c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "sub.c"]]
