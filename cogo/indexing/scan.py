"""Scanning a repository: hash every file, parse the ones whose sha256 is new."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cogo.indexing.files import language_of, list_files
from cogo.indexing.symbols import EXTRACTORS

MAX_FILE_BYTES = 2 * 1024 * 1024
BATCH_FILES = 200
BATCH_BYTES = 512 * 1024

_encoder = msgspec.json.Encoder()


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
