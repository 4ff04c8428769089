"""The indexer on ``indexing.index.0``: files, languages and symbols of a repository.

Payload: ``{"repo": "/abs/path", "full": false}``. The indexer lists the repository's files
(``git ls-files`` for a git work tree, else a walk honouring ``.gitignore``; virtualenvs,
build output, caches, binaries and files over 2 MiB are skipped), hashes each one and
re-parses only those whose sha256 changed since the last run. Per file it records path,
language, size, sha256, line count and symbols: classes, functions, methods and imports
with line numbers, through ``ast`` for Python and lighter regular expressions for
JavaScript/TypeScript, Go and Rust.

Results are events, batched: ``code_file_indexed`` / ``code_file_removed`` with
``data = {"repo", "files": [{"path", "language", "size", "sha256", "lines", "symbols":
[{"kind", "name", "line", "parent"}]}]}`` (removed files carry only ``path``), projected
into the ``code_files`` / ``code_symbols`` views (``projections/sql/20_code_index.sql``).
The previous run's ``{path: sha256}`` lives in the JetStream KV bucket ``code_index``
under the sha of the repository path; it is written only after every event is stored, so
a crash re-indexes rather than forgets. Walking and parsing block: they run in a thread.
"""

from __future__ import annotations

import ast
import asyncio
import fnmatch
import hashlib
import os
import re
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cogo.actors.worker import Outcome, TaskContext, Worker
from cogo.errors import InvalidPayload
from cogo.streams.envelope import WorkOrder
from cogo.streams.events import make_event
from cogo.streams.topology import ensure_kv

INDEX_BUCKET = "code_index"
FILE_INDEXED = "code_file_indexed"
FILE_REMOVED = "code_file_removed"
MAX_FILE_BYTES = 2 * 1024 * 1024
BATCH_FILES = 200
BATCH_BYTES = 512 * 1024
COMPRESS_ABOVE = 256 * 1024

SKIP_DIRS = {
    ".git", ".hg", ".svn", ".venv", "venv", ".env", "node_modules", "__pycache__", ".tox",
    ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".eggs", "build", "dist", "target",
    ".cogo", ".idea", ".gradle", ".next", "vendor",
}  # fmt: skip
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript",
    ".mts": "typescript", ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cs": "csharp",
    ".rb": "ruby", ".php": "php", ".swift": "swift", ".scala": "scala", ".sh": "shell",
    ".bash": "shell", ".sql": "sql", ".md": "markdown", ".rst": "rst", ".txt": "text",
    ".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".html": "html",
    ".css": "css", ".scss": "css", ".xml": "xml", ".conf": "config", ".ini": "config",
    ".cfg": "config",
}  # fmt: skip
NAMED = {"Makefile": "make", "Dockerfile": "dockerfile", "Justfile": "make"}

_encoder = msgspec.json.Encoder()


def language_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return NAMED.get(name) or LANGUAGES.get(os.path.splitext(name)[1].lower(), "other")


# -- listing files -----------------------------------------------------------------------


def list_files(root: Path) -> list[str]:
    """Relative paths (``/``-separated) of the files worth indexing under ``root``."""
    listed = _git_files(root) if (root / ".git").exists() else None
    paths = listed if listed is not None else _walk(root)
    return sorted(p for p in paths if not _skipped_dir(p) and (root / p).is_file())


def _git_files(root: Path) -> list[str] | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or not a work tree git accepts: walk instead
    return [p for p in done.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _skipped_dir(path: str) -> bool:
    parts = path.split("/")[:-1]
    return any(part in SKIP_DIRS or part.endswith(".egg-info") for part in parts)


@dataclass
class _Rule:
    base: str  # directory of the .gitignore, relative to the root ("" for the root)
    pattern: str
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not path.startswith(self.base + "/"):
                return False
            path = path[len(self.base) + 1 :]
        if self.anchored:
            return fnmatch.fnmatchcase(path, self.pattern) or fnmatch.fnmatchcase(
                path, self.pattern.replace("**/", "")
            )
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], self.pattern)


def _rules(directory: Path, base: str) -> list[_Rule]:
    try:
        text = (directory / ".gitignore").read_text(errors="replace")
    except OSError:
        return []
    rules = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:] if negate else line
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        rules.append(_Rule(base, line.lstrip("/"), negate, dir_only, anchored))
    return rules


def _ignored(rules: list[_Rule], path: str, is_dir: bool) -> bool:
    ignored = False
    for rule in rules:  # the last matching rule wins, as in git
        if rule.matches(path, is_dir):
            ignored = not rule.negate
    return ignored


def _walk(root: Path) -> list[str]:
    """A walk honouring ``.gitignore`` files (the common subset of their syntax)."""
    found: list[str] = []
    stack: list[tuple[Path, str, list[_Rule]]] = [(root, "", _rules(root, ""))]
    while stack:
        directory, rel, rules = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                if (
                    entry.name in SKIP_DIRS
                    or entry.name.endswith(".egg-info")
                    or os.path.exists(os.path.join(entry.path, "pyvenv.cfg"))  # a virtualenv
                    or _ignored(rules, path, True)
                ):
                    continue
                stack.append((Path(entry.path), path, rules + _rules(Path(entry.path), path)))
            elif entry.is_file() and not _ignored(rules, path, False):  # symlinked files too
                found.append(path)
    return found


# -- symbols -----------------------------------------------------------------------------


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
                        visit([s for group in inner for s in group if isinstance(s, ast.stmt)],
                              parent, in_class)  # fmt: skip

    visit(tree.body, None, False)
    return symbols


def _qualified(parent: str | None, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _symbol(kind: str, name: str, line: int, parent: str | None) -> dict[str, Any]:
    return {"kind": kind, "name": name, "line": line, "parent": parent}


_JS_RULES = [
    ("class", re.compile(r"^\s*(?:export\s+(?:default\s+)?)?(?:abstract\s+)?class\s+([A-Za-z_$][\w$]*)")),
    ("function", re.compile(r"^\s*(?:export\s+(?:default\s+)?)?(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)")),
    ("function", re.compile(r"^\s*(?:export\s+)?(?:const|let|var)\s+([A-Za-z_$][\w$]*)\s*(?::[^=]+)?=\s*(?:async\s+)?(?:function\b|\([^)]*\)\s*(?::[^=]+)?=>|[A-Za-z_$][\w$]*\s*=>)")),
    ("interface", re.compile(r"^\s*(?:export\s+)?interface\s+([A-Za-z_$][\w$]*)")),
    ("type", re.compile(r"^\s*(?:export\s+)?type\s+([A-Za-z_$][\w$]*)\s*(?:<[^>]*>)?\s*=")),
    ("enum", re.compile(r"^\s*(?:export\s+)?(?:const\s+)?enum\s+([A-Za-z_$][\w$]*)")),
    ("import", re.compile(r"^\s*import\s+(?:[^'\"]*?\s+from\s+)?['\"]([^'\"]+)['\"]")),
    ("import", re.compile(r"\brequire\(\s*['\"]([^'\"]+)['\"]\s*\)")),
]  # fmt: skip
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
]  # fmt: skip
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


# -- scanning ----------------------------------------------------------------------------


@dataclass
class Scan:
    """What changed in a repository since the previous index."""

    files: dict[str, str] = field(default_factory=dict)  # path -> sha256, now
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped_binary: int = 0
    skipped_large: int = 0


def scan(root: Path, previous: dict[str, str], full: bool = False) -> Scan:
    """Hash every file; parse the ones whose sha256 is new (blocking)."""
    result = Scan()
    for path in list_files(root):
        target = root / path
        try:
            if target.stat().st_size > MAX_FILE_BYTES:
                result.skipped_large += 1
                continue
            data = target.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            result.skipped_binary += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        result.files[path] = sha
        if not full and previous.get(path) == sha:
            result.unchanged += 1
            continue
        language = language_of(path)
        text = data.decode("utf-8", "replace")
        extractor = EXTRACTORS.get(language)
        result.changed.append(
            {
                "path": path,
                "language": language,
                "size": len(data),
                "sha256": sha,
                "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
                "symbols": extractor(text) if extractor else [],
            }
        )
    result.removed = sorted(set(previous) - set(result.files))
    return result


def batches(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split file records into events of at most BATCH_FILES files / ~BATCH_BYTES."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for record in records:
        record_size = len(_encoder.encode(record))
        if current and (len(current) >= BATCH_FILES or size + record_size > BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(record)
        size += record_size
    if current:
        out.append(current)
    return out


# -- the actor ---------------------------------------------------------------------------


class IndexerActor(Worker):
    """Indexes repositories incrementally into code events."""

    kind = "indexer"
    route = "indexing.index.0"

    async def on_start(self) -> None:
        self.index = await _bucket(self.js, self.config.bus.replicas)

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        repo = order.payload.get("repo")
        if not isinstance(repo, str) or not os.path.isabs(repo):
            raise InvalidPayload("indexing payload needs `repo`, an absolute path")
        root = await asyncio.to_thread(_repository, repo)
        key = hashlib.sha256(str(root).encode()).hexdigest()[:40]
        previous = await self._previous(key)
        found = await asyncio.to_thread(scan, root, previous, bool(order.payload.get("full")))
        pending = []
        for kind, records in (
            (FILE_INDEXED, found.changed),
            (FILE_REMOVED, [{"path": p} for p in found.removed]),
        ):
            for n, batch in enumerate(batches(records)):
                event = make_event(
                    kind,
                    # the same task re-run after a crash re-sends the same batches: deduped
                    event_id=f"{order.task_id}:{kind}:{n}",
                    task_id=order.task_id,
                    correlation_id=order.correlation_id,
                    route=order.route,
                    actor=self.name,
                    attempt=order.attempt,
                    data={"repo": str(root), "files": batch},
                )
                pending.append(await self.events.append_async(event))
        await asyncio.gather(*pending)  # every event stored before the state moves on
        await self.index.put(key, _encode_state(str(root), found.files))
        languages = Counter(language_of(p) for p in found.files)
        return Outcome(
            result={
                "repo": str(root),
                "files": len(found.files),
                "indexed": len(found.changed),
                "skipped": found.unchanged,
                "removed": len(found.removed),
                "symbols": sum(len(r["symbols"]) for r in found.changed),
                "skipped_binary": found.skipped_binary,
                "skipped_large": found.skipped_large,
                "languages": dict(languages.most_common()),
                "events": len(pending),
            }
        )

    async def _previous(self, key: str) -> dict[str, str]:
        try:
            entry = await self.index.get(key)
        except KeyNotFoundError:
            return {}
        return _decode_state(entry.value or b"")


def _repository(repo: str) -> Path:
    root = Path(repo).resolve()
    if not root.is_dir():
        raise InvalidPayload(f"repository {repo!r} is not a directory")
    return root


async def _bucket(js: Any, replicas: int) -> KeyValue:
    return await ensure_kv(
        js, INDEX_BUCKET, history=1, replicas=replicas,
        description="indexer state: repository -> {path: sha256}",
    )  # fmt: skip


def _encode_state(repo: str, files: dict[str, str]) -> bytes:
    raw = _encoder.encode({"repo": repo, "files": files})
    # large repositories: hex digests compress about 2x, keeping the value under max_payload
    return b"z" + zlib.compress(raw) if len(raw) > COMPRESS_ABOVE else raw


def _decode_state(value: bytes) -> dict[str, str]:
    if value.startswith(b"z"):
        value = zlib.decompress(value[1:])
    try:
        files = msgspec.json.decode(value).get("files") or {}
    except (msgspec.DecodeError, AttributeError):
        return {}  # unreadable state: index everything again
    return {str(k): str(v) for k, v in files.items()}
