"""The layout stays what docs/architecture.md says: its module table lists every module, data flows one
way (no import cycles between the package's parts; the model imports neither metrics nor tracking), and
each room stays small (no module over 500 lines, no function over 60)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixvae"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# What a part may never import (the arrows point one way: config → data → model → metrics → train → …).
FORBIDDEN = {
    "paths": {"*"},
    "tracking_uri": {"*"} - {"paths"},
    "config": {"data", "model", "metrics", "train", "tracking", "report", "run", "cli"},
    "data": {"model", "metrics", "train", "tracking", "report", "run", "cli"},
    "model": {"data", "metrics", "train", "tracking", "report", "run", "cli"},
    "metrics": {"train", "tracking", "report", "run", "cli"},
    "train": {"tracking", "report", "run", "cli"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    return "mixvae." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def _part(module: str) -> str:
    """The package's part a module belongs to: `mixvae.train.loop` → `train`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mixvae"


def _imports(path: Path) -> set[str]:
    """Every mixvae module imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    package = _name(path) if path.name == "__init__.py" else _name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mixvae")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("mixvae"):
                found.add(target)
                # `from mixvae import paths` imports the module mixvae.paths
                found |= {f"{target}.{a.name}" for a in node.names if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).is_dir()}
    return found


def _part_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in _modules():
        source = _part(_name(path))
        for target in _imports(path):
            if _part(target) not in (source, "mixvae"):
                graph[source].add(_part(target))
    return graph


def test_architecture_lists_every_module_and_nothing_else():
    listed = set(re.findall(r"`(mixvae/[\w/]+\.py)`", ARCHITECTURE.read_text()))
    actual = {str(p.relative_to(PACKAGE.parent)) for p in _modules() if p.name != "__main__.py"}
    assert not actual - listed, f"modules missing from docs/architecture.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/architecture.md names modules that do not exist: {sorted(listed - actual)}"


def test_no_import_cycles_between_parts():
    graph = _part_graph()

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return seen + (nxt,)
            if nxt not in seen:
                found = cycle_from(start, nxt, seen + (nxt,))
                if found:
                    return found
        return None

    for part in sorted(graph):
        cycle = cycle_from(part, part, (part,))
        assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_arrows_point_one_way():
    graph = _part_graph()
    wrong = []
    for part, banned in FORBIDDEN.items():
        for target in graph.get(part, ()):
            if "*" in banned and target != "paths" or target in banned:
                wrong.append(f"{part} → {target}")
    assert not wrong, wrong


def test_rooms_stay_small():
    too_long = []
    for path in _modules():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "\n".join(too_long)
