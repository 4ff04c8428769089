"""Symbols of a source file: classes, functions, methods and imports, with line numbers."""

from __future__ import annotations

import ast
import re
from typing import Any


def python_symbols(source: str) -> list[dict[str, Any]]:
    """Classes, functions, methods and imports of a Python module, via ``ast``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    symbols: list[dict[str, Any]] = []

    def visit(nodes: list[ast.stmt], parent: str | None, in_class: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                symbols.append(_symbol("class", node.name, node.lineno, parent))
                visit(node.body, _qualified(parent, node.name), True)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                kind = "method" if in_class else "function"
                symbols.append(_symbol(kind, node.name, node.lineno, parent))
                visit(node.body, _qualified(parent, node.name), False)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    symbols.append(_symbol("import", alias.name, node.lineno, parent))
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                for alias in node.names:
                    name = f"{module}.{alias.name}" if module.strip(".") else module + alias.name
                    symbols.append(_symbol("import", name, node.lineno, parent))
            else:  # if/try/with blocks hold definitions too
                for child in ("body", "orelse", "finalbody", "handlers"):
                    block = getattr(node, child, None)
                    if isinstance(block, list):
                        inner = [n.body if isinstance(n, ast.ExceptHandler) else [n] for n in block]
                        visit([s for group in inner for s in group if isinstance(s, ast.stmt)], parent, in_class)

    visit(tree.body, None, False)
    return symbols


def _qualified(parent: str | None, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _symbol(kind: str, name: str, line: int, parent: str | None) -> dict[str, Any]:
    return {"kind": kind, "name": name, "line": line, "parent": parent}


_JS_RULES = [
    ("class", re.compile(r"^\s*(?:export\s+(?:default\s+)?)?(?:abstract\s+)?class\s+([A-Za-z_$][\w$]*)")),
    ("function", re.compile(r"^\s*(?:export\s+(?:default\s+)?)?(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)")),
    (
        "function",
        re.compile(
            r"^\s*(?:export\s+)?(?:const|let|var)\s+([A-Za-z_$][\w$]*)\s*(?::[^=]+)?=\s*(?:async\s+)?(?:function\b|\([^)]*\)\s*(?::[^=]+)?=>|[A-Za-z_$][\w$]*\s*=>)"
        ),
    ),
    ("interface", re.compile(r"^\s*(?:export\s+)?interface\s+([A-Za-z_$][\w$]*)")),
    ("type", re.compile(r"^\s*(?:export\s+)?type\s+([A-Za-z_$][\w$]*)\s*(?:<[^>]*>)?\s*=")),
    ("enum", re.compile(r"^\s*(?:export\s+)?(?:const\s+)?enum\s+([A-Za-z_$][\w$]*)")),
    ("import", re.compile(r"^\s*import\s+(?:[^'\"]*?\s+from\s+)?['\"]([^'\"]+)['\"]")),
    ("import", re.compile(r"\brequire\(\s*['\"]([^'\"]+)['\"]\s*\)")),
]
_JS_METHOD = re.compile(
    r"^\s+(?:(?:static|async|public|private|protected|readonly|override|get|set)\s+)*"
    r"([A-Za-z_$][\w$]*)\s*\([^)]*\)\s*(?::[^{]+)?\{"
)
_JS_NOT_METHODS = {"if", "for", "while", "switch", "catch", "function", "return", "with"}
_GO_RULES = [
    ("method", re.compile(r"^func\s+\(\s*\w*\s*\*?\s*([A-Za-z_]\w*)(?:\[[^\]]*\])?\s*\)\s*([A-Za-z_]\w*)")),
    ("function", re.compile(r"^func\s+([A-Za-z_]\w*)")),
    ("struct", re.compile(r"^type\s+([A-Za-z_]\w*)(?:\[[^\]]*\])?\s+struct\b")),
    ("interface", re.compile(r"^type\s+([A-Za-z_]\w*)(?:\[[^\]]*\])?\s+interface\b")),
    ("type", re.compile(r"^type\s+([A-Za-z_]\w*)\s+(?!struct\b|interface\b)")),
    ("import", re.compile(r"^import\s+(?:[\w.]+\s+)?\"([^\"]+)\"")),
]
_GO_IMPORT_LINE = re.compile(r"^\s*(?:[\w.]+\s+)?\"([^\"]+)\"")
_RUST_ITEM = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:(?:async|unsafe|const|extern\s+\"[^\"]*\")\s+)*"
    r"(fn|struct|enum|trait|mod|type|union)\s+([A-Za-z_]\w*)"
)
_RUST_IMPL = re.compile(r"^\s*(?:unsafe\s+)?impl\b(?:\s*<[^{]*?>)?\s+(?:[^{]*?\s+for\s+)?([\w:]+)")
_RUST_USE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")


def javascript_symbols(source: str) -> list[dict[str, Any]]:
    """A light regex pass over JavaScript / TypeScript (classes and their methods, too)."""
    symbols: list[dict[str, Any]] = []
    depth = 0
    classes: list[tuple[str, int]] = []  # (name, depth inside its body)
    for number, line in enumerate(source.splitlines(), 1):
        while classes and depth < classes[-1][1]:
            classes.pop()
        matched = False
        for kind, pattern in _JS_RULES:
            for found in pattern.finditer(line) if kind == "import" else [pattern.match(line)]:
                if found:
                    symbols.append(_symbol(kind, found.group(1), number, None))
                    matched = True
                    if kind == "class" and "{" in line:
                        classes.append((found.group(1), depth + 1))
            if matched and kind != "import":
                break
        if not matched and classes and depth == classes[-1][1]:
            method = _JS_METHOD.match(line)
            if method and method.group(1) not in _JS_NOT_METHODS:
                symbols.append(_symbol("method", method.group(1), number, classes[-1][0]))
        depth += _braces(line)
    return symbols


def go_symbols(source: str) -> list[dict[str, Any]]:
    symbols: list[dict[str, Any]] = []
    in_imports = False
    for number, line in enumerate(source.splitlines(), 1):
        if in_imports:
            if line.strip().startswith(")"):
                in_imports = False
            elif found := _GO_IMPORT_LINE.match(line):
                symbols.append(_symbol("import", found.group(1), number, None))
            continue
        if re.match(r"^import\s*\(", line):
            in_imports = True
            continue
        for kind, pattern in _GO_RULES:
            if found := pattern.match(line):
                if kind == "method":
                    symbols.append(_symbol(kind, found.group(2), number, found.group(1)))
                else:
                    symbols.append(_symbol(kind, found.group(1), number, None))
                break
    return symbols


def rust_symbols(source: str) -> list[dict[str, Any]]:
    symbols: list[dict[str, Any]] = []
    depth = 0
    impls: list[tuple[str, int]] = []  # (type, depth inside the impl/trait body)
    for number, line in enumerate(source.splitlines(), 1):
        while impls and depth < impls[-1][1]:
            impls.pop()
        if found := _RUST_USE.match(line):
            symbols.append(_symbol("import", " ".join(found.group(1).split()), number, None))
        elif found := _RUST_IMPL.match(line):
            name = found.group(1).split("::")[-1]
            symbols.append(_symbol("impl", name, number, None))
            impls.append((name, depth + 1))
        elif found := _RUST_ITEM.match(line):
            kind, name = found.group(1), found.group(2)
            inside = impls[-1][0] if impls and depth == impls[-1][1] else None
            if kind == "fn":
                kind = "method" if inside else "function"
            symbols.append(_symbol(kind, name, number, inside))
            if kind == "trait":
                impls.append((name, depth + 1))
        depth += _braces(line)
    return symbols


def _braces(line: str) -> int:
    # strings and comments are not parsed: good enough for the light extractors
    code = re.sub(r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|`[^`]*`|//.*$)", "", line)
    return code.count("{") - code.count("}")


EXTRACTORS = {
    "python": python_symbols,
    "javascript": javascript_symbols,
    "typescript": javascript_symbols,
    "go": go_symbols,
    "rust": rust_symbols,
}
