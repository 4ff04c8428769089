"""Secrets in the data dir (API token, webhook key, passwords), written 0600 and atomically.

``O_CREAT | O_EXCL`` and then a write leaves a moment in which the file exists and is
empty: a second process starting at that moment read an empty key and signed with it.
Here the secret is written and fsynced to a private temporary file first, then
``link()``-ed to its name, which fails if the name exists: every process either publishes
its own complete file or reads the one that won; none ever sees a partial one.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from cogo.errors import ConfigError


def read_or_create(path: Path, *, nbytes: int = 32) -> str:
    """The secret in ``path``, or a new ``token_urlsafe(nbytes)`` written there (0600).

    Blocking (file I/O): call it from a thread in async code.
    """
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(nbytes))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses to replace a file another process linked
        except FileExistsError:
            pass  # another process won the race: use its secret
    finally:
        tmp.unlink(missing_ok=True)
    winner = _read(path)
    if winner is None:
        raise ConfigError(f"secret file {path} vanished while it was being created")
    return winner


def write_private_json(path: Path, data: Any) -> Path:
    """Replace ``path`` with ``data`` as JSON, readable by its owner only (0600), atomically:
    a reader sees the old file or the new one, never a half-written one."""
    return write_private_text(path, json.dumps(data, indent=2))


def write_private_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text``, 0600 from its first byte, atomically.

    The temporary file gets a fresh name (``O_EXCL``), so it is never an older file whose
    wider mode ``O_CREAT`` would keep, and ``os.replace`` swaps the inode: a file left 0644
    by an older release is replaced, not rewritten in place.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        raise ConfigError(f"secret file {path} is empty: delete it to have a new one made")
    return text
