"""Code edits: the wire model of ``edits.json``, path checks, and applying edits to a tree.

Shared by the codegen actor (which validates and dry-runs the edits it emits) and the
build/test worker (which applies them in its workspace). An edit is one of five ops, each
with a ``path`` relative to the repository root::

    {"op": "create",         "path": "a.py", "content": "..."}   new file; fails if it exists
    {"op": "replace",        "path": "a.py", "content": "..."}   whole file (created if absent)
    {"op": "search_replace", "path": "a.py", "search": "...", "replace": "...",
                             "replace_all": false}               exactly one match unless all
    {"op": "delete",         "path": "a.py"}
    {"op": "patch",          "path": "a.py", "diff": "@@ -1,2 +1,2 @@ ..."}  unified diff

A patch applies to its edit's ``path`` only; the diff's own ``---``/``+++`` names are
ignored, so a diff can never reach a file the path check did not approve.

Everything here is synchronous file work: actors call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from cogo.errors import EditConflict, EditPathInvalid, InvalidEdit

EDITS_ARTIFACT = "edits.json"  # the artifact codegen writes, build/test reads
MAX_EDITS = 500
MAX_PATH_CHARS = 1024


class Create(msgspec.Struct, frozen=True, tag="create", tag_field="op", forbid_unknown_fields=True):
    """Create a new file; the path must not exist yet."""

    path: str
    content: str


class Replace(msgspec.Struct, frozen=True, tag="replace", tag_field="op", forbid_unknown_fields=True):
    """Replace a whole file (or create it)."""

    path: str
    content: str


class SearchReplace(msgspec.Struct, frozen=True, tag="search_replace", tag_field="op", forbid_unknown_fields=True):
    """Replace ``search`` with ``replace``: exactly one occurrence unless ``replace_all``."""

    path: str
    search: str
    replace: str
    replace_all: bool = False


class Delete(msgspec.Struct, frozen=True, tag="delete", tag_field="op", forbid_unknown_fields=True):
    """Delete a file."""

    path: str


class Patch(msgspec.Struct, frozen=True, tag="patch", tag_field="op", forbid_unknown_fields=True):
    """Apply a unified diff (hunks only matter) to one file."""

    path: str
    diff: str


Edit = Create | Replace | SearchReplace | Delete | Patch

_encoder = msgspec.json.Encoder()


def decode_edits(raw: Any) -> list[Edit]:
    """Turn JSON-ish data (a list of edit objects) into edits; check every path lexically."""
    if not isinstance(raw, list):
        raise InvalidEdit(f"edits must be a list of edit objects, got {type(raw).__name__}")
    if len(raw) > MAX_EDITS:
        raise InvalidEdit(f"{len(raw)} edits; at most {MAX_EDITS} per change")
    try:
        edits = msgspec.convert(raw, list[Edit])
    except msgspec.ValidationError as exc:
        raise InvalidEdit(f"invalid edit: {exc}", detail=str(exc)) from None
    for i, edit in enumerate(edits):
        check_path(edit.path, where=f"$[{i}].path")
        if isinstance(edit, SearchReplace) and not edit.search:
            raise InvalidEdit(f"edit {i} ({edit.path}): `search` must not be empty")
    return edits


def encode_edits(edits: Iterable[Edit]) -> bytes:
    """``edits.json``: the edits as a JSON list."""
    return _encoder.encode(list(edits))


def check_path(path: str, *, where: str = "path") -> PurePosixPath:
    """Reject absolute paths, ``..``, empty or odd segments; return the normalized path."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise EditPathInvalid(f"{where}: path must be 1-{MAX_PATH_CHARS} characters")
    if "\x00" in path or "\\" in path:
        raise EditPathInvalid(f"{where}: path {path!r} holds a NUL or a backslash")
    pure = PurePosixPath(path)
    if pure.is_absolute() or path.startswith("~"):
        raise EditPathInvalid(f"{where}: path {path!r} is absolute; edits are repo-relative")
    if ".." in pure.parts:
        raise EditPathInvalid(f"{where}: path {path!r} climbs out of the repository with '..'")
    if not pure.parts or pure.parts == (".",):
        raise EditPathInvalid(f"{where}: path {path!r} names no file")
    if pure.parts[0] == ".git":
        raise EditPathInvalid(f"{where}: path {path!r} is inside .git")
    return pure


def resolve_inside(root: Path, path: str) -> Path:
    """``root / path`` with symlinks resolved; EditPathInvalid if it lands outside ``root``."""
    check_path(path)
    base = root.resolve()
    target = (base / path).resolve()
    if target == base or not target.is_relative_to(base):
        raise EditPathInvalid(f"path {path!r} resolves outside the workspace (symlink escape)")
    return target


# -- applying ----------------------------------------------------------------------------


def plan_edits(root: Path, edits: Iterable[Edit]) -> dict[Path, str | None]:
    """Compute every touched file's final text (None = deleted) without writing anything."""
    state: dict[Path, str | None] = {}
    for edit in edits:
        target = resolve_inside(root, edit.path)
        if target not in state:
            state[target] = _read(target, edit.path)
        state[target] = apply_edit(edit, state[target])
    return state


def apply_edits(root: Path, edits: Iterable[Edit]) -> list[str]:
    """Apply the edits under ``root`` all-or-nothing; return the touched paths."""
    planned = plan_edits(root, list(edits))
    for target, text in planned.items():
        if text is None:
            if target.is_file():
                target.unlink()
            continue
        # ``target`` is resolved: an edit through a link inside the tree edits the link's target
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))
    return sorted(str(t.relative_to(root.resolve())) for t in planned)


def apply_edit(edit: Edit, text: str | None) -> str | None:
    """One edit applied to a file's text (None when the file does not exist)."""
    if isinstance(edit, Create):
        if text is not None:
            raise EditConflict(f"create {edit.path}: the file already exists (use replace)")
        return edit.content
    if isinstance(edit, Replace):
        return edit.content
    if isinstance(edit, Delete):
        if text is None:
            raise EditConflict(f"delete {edit.path}: no such file")
        return None
    if isinstance(edit, SearchReplace):
        if text is None:
            raise EditConflict(f"search_replace {edit.path}: no such file")
        found = text.count(edit.search)
        if found == 0:
            raise EditConflict(f"search_replace {edit.path}: search text not found")
        if found > 1 and not edit.replace_all:
            raise EditConflict(
                f"search_replace {edit.path}: search text occurs {found} times; make it unique or set replace_all"
            )
        return text.replace(edit.search, edit.replace)
    return apply_patch(text or "", edit.diff, edit.path)


def _read(target: Path, path: str) -> str | None:
    if not target.exists():
        return None
    if not target.is_file():
        raise EditConflict(f"{path} is not a regular file")
    try:
        return target.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise EditConflict(f"{path} is not UTF-8 text; edits apply to text files") from None


# -- unified diffs -------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class _Hunk:
    __slots__ = ("old_start", "old", "new")

    def __init__(self, old_start: int) -> None:
        self.old_start = old_start
        self.old: list[str] = []  # lines with their "\n" (the last one may lack it)
        self.new: list[str] = []


def _parse_hunks(diff: str, path: str) -> list[_Hunk]:
    hunks: list[_Hunk] = []
    last: list[str] | None = None  # the side the previous line went to, for "\ No newline"
    lines = diff.splitlines()
    for i, line in enumerate(lines):
        match = _HUNK.match(line)
        if match:
            hunks.append(_Hunk(int(match.group(1))))
            last = None
            continue
        if not hunks:
            continue  # headers: diff --git, index, ---, +++
        if line.startswith("diff ") or (
            line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
        ):
            raise InvalidEdit(f"patch {path}: the diff covers several files; one edit per file")
        hunk = hunks[-1]
        if line.startswith("\\"):
            for side in (hunk.old, hunk.new) if last is None else (last,):
                if side and side[-1].endswith("\n"):
                    side[-1] = side[-1][:-1]
            continue
        tag, body = (line[:1], line[1:]) if line else (" ", "")
        if tag == " ":  # context (an empty line is context whose blank was stripped)
            hunk.old.append(body + "\n")
            hunk.new.append(body + "\n")
            last = None
        elif tag == "-":
            hunk.old.append(body + "\n")
            last = hunk.old
        elif tag == "+":
            hunk.new.append(body + "\n")
            last = hunk.new
        else:
            raise InvalidEdit(f"patch {path}: unexpected diff line {line[:80]!r}")
    if not hunks:
        raise InvalidEdit(f"patch {path}: the diff has no @@ hunks")
    return hunks


def apply_patch(text: str, diff: str, path: str) -> str:
    """Apply a unified diff's hunks to ``text``; a hunk may sit at an offset, never fuzzed."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    cursor = 0
    for number, hunk in enumerate(_parse_hunks(diff, path), 1):
        want = hunk.old_start - 1 if hunk.old else hunk.old_start
        at = _locate(lines, hunk.old, want, cursor)
        if at is None:
            raise EditConflict(f"patch {path}: hunk {number} does not apply")
        out.extend(lines[cursor:at])
        out.extend(hunk.new)
        cursor = at + len(hunk.old)
    out.extend(lines[cursor:])
    return "".join(out)


def _locate(lines: list[str], old: list[str], want: int, floor: int) -> int | None:
    # search outward from where the header says the hunk starts, never before the last hunk
    limit = len(lines) - len(old)
    if limit < floor:
        return None
    want = min(max(want, floor), limit)
    for delta in range(limit - floor + 1):
        for at in (want - delta, want + delta):
            if floor <= at <= limit and all(_same(lines[at + i], o) for i, o in enumerate(old)):
                return at
    return None


def _same(line: str, expected: str) -> bool:
    # CRLF files match LF diffs: line endings are not content
    return line.rstrip("\r\n") == expected.rstrip("\r\n")
