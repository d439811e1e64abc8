"""The layering the docs promise (docs/architecture.md): no import cycle inside moalign/, no component
importing another, and the library never importing components or flows."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_moalign_has_no_import_cycle():
    modules = {_module(p): p for p in (ROOT / "moalign").rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for target in graph[node]:
                if target == start:
                    return trail + [start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, trail + [target]))
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name))]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_layers_import_downwards_only():
    for path in (ROOT / "moalign").rglob("*.py"):
        upward = {m for m in _imports(path) if m.split(".")[0] in ("components", "flows")}
        assert not upward, f"{path.relative_to(ROOT)} imports {upward}"
    for path in (ROOT / "components").glob("*.py"):
        others = {m for m in _imports(path) if m.startswith("components.") and not m.startswith("components._stage")}
        assert not others, f"{path.relative_to(ROOT)} imports another component: {others}"
