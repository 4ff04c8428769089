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

import asyncio
import hashlib
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cogo.errors import InvalidPayload
from cogo.indexing.files import language_of
from cogo.indexing.scan import batches, scan
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.worker import Worker
from cogo.streams.catalogue import FILE_INDEXED, FILE_REMOVED
from cogo.streams.envelope import WorkOrder
from cogo.streams.events import make_event
from cogo.streams.topology import ensure_kv

INDEX_BUCKET = "code_index"
COMPRESS_ABOVE = 256 * 1024

_encoder = msgspec.json.Encoder()


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
        js,
        INDEX_BUCKET,
        history=1,
        replicas=replicas,
        description="indexer state: repository -> {path: sha256}",
    )


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
