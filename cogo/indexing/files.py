"""The files of a repository worth indexing, and their languages.

A git work tree is listed by ``git ls-files`` (tracked and untracked-but-not-ignored);
anything else is walked, honouring every ``.gitignore`` on the way with pathspec's
``GitIgnoreSpec`` (git's own rules: ``doc/*.txt`` matches ``doc/x.txt`` but not
``doc/sub/y.txt``; a deeper file's rules override a shallower one's; ``!`` re-includes).
Virtualenvs, build output, caches and tool directories are skipped either way.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pathspec

SKIP_DIRS = {
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    ".env",
    "node_modules",
    "__pycache__",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".eggs",
    "build",
    "dist",
    "target",
    ".cogo",
    ".idea",
    ".gradle",
    ".next",
    "vendor",
}
LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".scala": "scala",
    ".sh": "shell",
    ".bash": "shell",
    ".sql": "sql",
    ".md": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".json": "json",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".html": "html",
    ".css": "css",
    ".scss": "css",
    ".xml": "xml",
    ".conf": "config",
    ".ini": "config",
    ".cfg": "config",
}
NAMED = {"Makefile": "make", "Dockerfile": "dockerfile", "Justfile": "make"}


def language_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return NAMED.get(name) or LANGUAGES.get(os.path.splitext(name)[1].lower(), "other")


def list_files(root: Path) -> list[str]:
    """Relative paths (``/``-separated) of the files worth indexing under ``root``."""
    listed = _git_files(root) if (root / ".git").exists() else None
    paths = listed if listed is not None else _walk(root)
    return sorted(p for p in paths if not _skipped_dir(p) and (root / p).is_file())


def _git_files(root: Path) -> list[str] | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or not a work tree git accepts: walk instead
    return [p for p in done.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _skipped_dir(path: str) -> bool:
    parts = path.split("/")[:-1]
    return any(part in SKIP_DIRS or part.endswith(".egg-info") for part in parts)


@dataclass(frozen=True)
class _Ignore:
    """The rules of one ``.gitignore``, and the directory (relative to the root) it is in."""

    base: str
    spec: pathspec.GitIgnoreSpec

    def verdict(self, path: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included (``!``), None: no rule of this file matches."""
        if self.base:
            if not path.startswith(self.base + "/"):
                return None
            path = path[len(self.base) + 1 :]
        return self.spec.check_file(path + "/" if is_dir else path).include


def _ignores(directory: Path, base: str) -> list[_Ignore]:
    try:
        text = (directory / ".gitignore").read_text(errors="replace")
    except OSError:
        return []
    return [_Ignore(base, pathspec.GitIgnoreSpec.from_lines(text.splitlines()))]


def _ignored(ignores: list[_Ignore], path: str, is_dir: bool) -> bool:
    ignored = False
    for rules in ignores:  # root first: a deeper .gitignore has the last word
        verdict = rules.verdict(path, is_dir)
        if verdict is not None:
            ignored = verdict
    return ignored


def _walk(root: Path) -> list[str]:
    """A walk honouring ``.gitignore`` files (an ignored directory is not entered)."""
    found: list[str] = []
    stack: list[tuple[Path, str, list[_Ignore]]] = [(root, "", _ignores(root, ""))]
    while stack:
        directory, rel, ignores = stack.pop()
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
                    or _ignored(ignores, path, True)
                ):
                    continue
                inner = ignores + _ignores(Path(entry.path), path)
                stack.append((Path(entry.path), path, inner))
            elif entry.is_file() and not _ignored(ignores, path, False):  # symlinked files too
                found.append(path)
    return found
