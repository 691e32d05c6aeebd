"""The package layout is the architecture: ``bbzo.blackbox`` has no import cycle, and its layers
import only downwards (protocol ← targets ← query ← zo). Fails on the first offending import,
module-level or inside a function alike."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import bbzo

ROOT = Path(bbzo.__file__).parent
# A layer may import the layers listed for it (and itself), never one above it.
ALLOWED = {
    "protocol": set(),
    "budget": set(),
    "targets": {"protocol"},
    "query": {"protocol", "budget", "targets"},
    "zo": {"protocol", "budget", "query"},
    "serve": {"protocol", "targets"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every bbzo module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bbzo"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("bbzo"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "blackbox").rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name}
            for name, path in files.items()}


def test_blackbox_has_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else ""


def test_layers_import_only_downwards():
    bad = []
    for name, targets in graph().items():
        mine = layer(name)
        for target in targets:
            other = layer(target)
            if other and other != mine and mine in ALLOWED and other not in ALLOWED[mine]:
                bad.append(f"{name} imports {target}")
    assert not bad, "; ".join(sorted(bad))


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """The checker itself can fail: a two-module cycle is reported."""
    edges = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: edges)
    try:
        test_blackbox_has_no_import_cycle()
    except AssertionError as err:
        assert "a -> b -> a" in str(err)
    else:
        raise AssertionError("a cycle went unnoticed")
