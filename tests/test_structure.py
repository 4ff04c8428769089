"""Package boundaries (``scripts/import_graph.py``): no import cycles between modules or
packages; every import points down the rooms (foundation, SDK, agents | runtime, entry
points) and, inside them, down the layers of packages (a lower layer never imports an upper
one, not even inside a function)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import import_graph  # noqa: E402

# lowest first: a package may import the ones before it, never the ones after
LAYERS = [
    "cogo.errors",
    "cogo.aio",
    "cogo.tracing",
    "cogo.lifeline",
    "cogo.config",
    "cogo.secretfile",
    "cogo.endpoints",
    "cogo.streams",
    "cogo.sdk",
    "cogo.integrations",
    "cogo.indexing",
    "cogo.agents",
    "cogo.workflows",
    "cogo.projections",
    "cogo.http",
    "cogo.rollouts",
    "cogo.runtime",
    "cogo.devllm",
    "cogo.testing",
    "cogo.bench",
    "cogo.cli",
    "cogo.__main__",
]


def test_no_import_cycles():
    edges = import_graph.graph()
    assert import_graph.cycles(edges) == []
    assert import_graph.cycles(import_graph.package_edges(edges)) == []


def test_every_module_is_in_a_room():
    unplaced = [m for m in import_graph.graph() if import_graph.room_of(m) is None]
    assert unplaced == [], "place these in import_graph.ROOMS"


def test_imports_point_down_the_rooms():
    """The SDK never imports the runtime, the agents Cogo ships neither (nor the runtime
    them), the foundation nothing above it."""
    assert import_graph.wrong_way_imports(import_graph.graph()) == []


def test_imports_point_down_the_layers():
    packages = import_graph.package_edges(import_graph.graph())
    unknown = set(packages) - set(LAYERS)
    assert not unknown, f"place these packages in LAYERS: {sorted(unknown)}"
    upward = [
        f"{src} -> {dst}"
        for src, targets in packages.items()
        for dst in targets
        if LAYERS.index(dst) > LAYERS.index(src)
    ]
    assert upward == []


def test_the_rooms_check_fails_on_an_upward_import():
    for src, dst in [("sdk", "runtime"), ("agents", "runtime"), ("runtime", "agents")]:
        assert import_graph.wrong_way(src, dst), f"{src} -> {dst}"
    assert import_graph.wrong_way("foundation", "sdk")
    assert not import_graph.wrong_way("runtime", "sdk")
    assert not import_graph.wrong_way("entry points", "agents")


def test_cogo_variables_are_read_in_config_and_documented():
    """Every ``COGO_*`` name is a constant of ``cogo.config`` and listed in defaults.toml."""
    import ast

    import cogo.config
    from cogo import config

    root = Path(cogo.config.__file__).parent
    elsewhere = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "config.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith("COGO_") and node.value.strip("_").isupper():
                    elsewhere.append(f"{path.relative_to(root)}: {node.value}")
    assert elsewhere == []
    names = [v for k, v in vars(config).items() if k.endswith("_ENV") and isinstance(v, str)]
    documented = (root / "defaults.toml").read_text()
    assert len(names) >= 17 and [n for n in names if n not in documented] == []


def test_no_module_of_the_package_is_over_500_lines():
    """Past ~500 lines a module holds more than one idea: split it along a seam."""
    root = Path(import_graph.ROOT)
    long = {
        str(p.relative_to(root.parent)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_the_formatter_needs_no_exceptions():
    """``ruff format`` (line-length 120) formats every file as it stands: no file of the
    package, the tests, the scripts or the examples opts a line or a block out of it."""
    top = Path(import_graph.ROOT).parent
    marker = "# fmt: " + "skip"  # spelled apart so that this file does not hold it
    off = "# fmt: " + "off"
    found = [
        str(p.relative_to(top))
        for folder in ("cogo", "tests", "scripts", "examples")
        for p in (top / folder).rglob("*.py")
        if marker in (text := p.read_text()) or off in text
    ]
    assert found == []
