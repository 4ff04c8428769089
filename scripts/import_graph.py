"""Print Cogo's import graph: its rooms, the edges between them, package edges and cycles.

    python scripts/import_graph.py            # rooms, edges, cycles; exit 1 on a cycle or
                                              # on an edge that points the wrong way
    python scripts/import_graph.py --modules  # every module edge too
    python scripts/import_graph.py --root /tmp/old/cogo   # another checkout's tree

Every import counts, also one inside a function (a lazy import still ties two modules);
``if TYPE_CHECKING:`` blocks do not (they never run). Reads the source with ``ast``:
nothing is imported.

The rooms, from the bottom up (``ROOMS``): the foundation every room may import (errors,
configuration, the wire types and the bus), the SDK users import, then side by side the
agents Cogo ships (an app like any user's: SDK and foundation only) and the runtime that runs
apps (the HTTP facade, projections, workflows and rollouts are runtime services), and on top
the entry points (CLI, bench, ``cogo.testing``). An import may point down, never up nor
sideways: the SDK never imports the runtime, the agents never the runtime, the runtime never
the agents (it loads their app by reference, as it loads a user's)."""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "cogo"


# room -> its level: an import may only point to a lower level
LEVELS = {"foundation": 0, "sdk": 1, "agents": 2, "runtime": 2, "entry points": 3}
# room -> the packages and modules in it
ROOMS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "cogo.aio",
        "cogo.config",
        "cogo.endpoints",
        "cogo.errors",
        "cogo.lifeline",
        "cogo.secretfile",
        "cogo.streams",
        "cogo.tracing",
    ),
    "sdk": ("cogo", "cogo.sdk", "cogo.integrations"),
    "agents": ("cogo.agents", "cogo.indexing"),
    "runtime": ("cogo.runtime", "cogo.http", "cogo.projections", "cogo.workflows", "cogo.rollouts"),
    "entry points": ("cogo.__main__", "cogo.bench", "cogo.cli", "cogo.devllm", "cogo.testing"),
}


def room_of(module: str) -> str | None:
    """The room of ``module``: that of the longest package in ``ROOMS`` it lies in."""
    best, length = None, -1
    for room, members in ROOMS.items():
        for member in members:
            inside = module == member or module.startswith(member + ".")
            if inside and len(member) > length and (member != "cogo" or module == "cogo"):
                best, length = room, len(member)
    return best


def wrong_way(src: str, dst: str) -> bool:
    """Whether an import from room ``src`` of room ``dst`` points up or sideways."""
    return src != dst and LEVELS[dst] >= LEVELS[src]


def room_edges(edges: dict[str, set[str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(room, room) -> the module imports from the first into the second."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for src, targets in edges.items():
        for dst in targets:
            a, b = room_of(src), room_of(dst)
            if a and b and a != b:
                out[a, b].append((src, dst))
    return out


def wrong_way_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every module import that points up or sideways between rooms, as text."""
    return [
        f"wrong way ({a} -> {b}): {src} imports {dst}"
        for (a, b), pairs in sorted(room_edges(edges).items())
        if wrong_way(a, b)
        for src, dst in sorted(pairs)
    ]


def module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: set[str], root: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    here = module_of(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cogo"):
                    found.add(resolve(alias.name) or alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("cogo"):
                for alias in node.names:
                    target = resolve(f"{base}.{alias.name}") or resolve(base)
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(here)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every module of the package at ``root`` and the cogo modules it imports."""
    paths = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_of(p, root) for p in paths}
    return {module_of(p, root): imports_of(p, modules, root) for p in paths}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for src, targets in edges.items():
        for dst in targets:
            a, b = package_of(src), package_of(dst)
            # a package's __init__ re-exporting its own modules is not a dependency
            if a != b and not (src == "cogo" or dst == "cogo"):
                out[a].add(b)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="print every module edge")
    parser.add_argument("--root", type=Path, default=ROOT, help="the cogo package to read")
    args = parser.parse_args()
    edges = graph(args.root.resolve())
    packages = package_edges(edges)
    found = False
    print("rooms:")
    unplaced = sorted(m for m in edges if room_of(m) is None)
    for room, level in sorted(LEVELS.items(), key=lambda item: item[1]):
        members = sorted({package_of(m) for m in edges if room_of(m) == room})
        print(f"  {level} {room}: {', '.join(members)}")
    for module in unplaced:
        found = True
        print(f"module in no room (add its package to ROOMS): {module}")
    rooms = room_edges(edges)
    print("room edges (imports):")
    for (a, b), pairs in sorted(rooms.items(), key=lambda item: (-LEVELS[item[0][0]], item[0])):
        print(f"  {a} -> {b} ({len(pairs)}){'  WRONG WAY' if wrong_way(a, b) else ''}")
    for line in wrong_way_imports(edges):
        found = True
        print(line)
    print("package edges:")
    for src in sorted(packages):
        print(f"  {src} -> {', '.join(sorted(packages[src]))}")
    if args.modules:
        print("module edges:")
        for src in sorted(edges):
            if edges[src]:
                print(f"  {src} -> {', '.join(sorted(edges[src]))}")
    for kind, cyc in (("package", cycles(packages)), ("module", cycles(edges))):
        for component in cyc:
            found = True
            print(f"{kind} cycle: {' <-> '.join(component)}")
    if not found:
        print("no cycles, no edge pointing the wrong way")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
