"""Artifacts: files a task produced, in the JetStream Object Store bucket ``artifacts``.

Keys are ``<taskId>/<path>`` (``<taskId>/edits.json``, ``<taskId>/build-test/report.json``).
The object store is the copy every node and the HTTP facade read; the writer also mirrors
each artifact to ``<data-dir>/artifacts/<taskId>/<path>`` for local inspection, and appends
an ``artifact_stored`` event that ties the artifact to its task and workflow run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from pathlib import Path, PurePosixPath

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from cogo.config import NATS_USER_ENV, env
from cogo.errors import ArtifactKeyInvalid, ArtifactNotFound
from cogo.streams.catalogue import ARTIFACT_STORED, ArtifactRef
from cogo.streams.envelope import WorkOrder
from cogo.streams.events import EventLog, order_event
from cogo.streams.seal import guard_id
from cogo.streams.topology import ARTIFACT_BUCKET

MAX_KEY_CHARS = 1024
CHUNK_TIMEOUT_S = 10.0  # the longest wait for the next chunk of an artifact being read


def artifact_key(task_id: str, path: str) -> str:
    """``<task_id>/<path>``, or ArtifactKeyInvalid if either part could escape its folder."""
    key = f"{task_id}/{path}"
    if not task_id or "/" in task_id or not path or len(key) > MAX_KEY_CHARS:
        raise ArtifactKeyInvalid(f"artifact key {key[:200]!r}: need a task id without '/' and a non-empty path")
    if "\x00" in key or "\\" in key or PurePosixPath(path).is_absolute():
        raise ArtifactKeyInvalid(f"artifact key {key[:200]!r} holds a NUL, '\\' or absolute path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ArtifactKeyInvalid(f"artifact key {key[:200]!r} has an empty, '.' or '..' segment")
    return key


class _NoPurge:
    """A JetStream context whose ``purge_stream`` does nothing (see ``ArtifactStore.bucket``)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    def __getattr__(self, name: str) -> object:
        return getattr(self._js, name)

    async def purge_stream(self, *_: object, **__: object) -> bool:
        return True


class ArtifactStore:
    """Reads and writes artifacts; ``data_dir`` (optional) receives the local mirror."""

    def __init__(self, js: JetStreamContext, data_dir: Path | None = None, events: EventLog | None = None) -> None:
        self._js = js
        self._data_dir = data_dir
        self._events = events or EventLog(js)
        self._bucket: ObjectStore | None = None

    async def bucket(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await self._js.object_store(ARTIFACT_BUCKET)
            if env(NATS_USER_ENV) not in (None, "admin"):
                # under --auth no worker may purge the bucket (it would wipe every app's
                # artifacts): replacing an object then leaves its old chunks to the stream's
                # limits instead of purging them
                self._bucket._js = _NoPurge(self._js)  # type: ignore[assignment]
        return self._bucket

    async def put(self, order: WorkOrder, path: str, data: bytes, *, actor: str | None = None) -> ArtifactRef:
        """Store ``<order.task_id>/<path>``, mirror it, append ``artifact_stored``."""
        key = artifact_key(order.task_id, path)
        ref = ArtifactRef(name=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        await (await self.bucket()).put(key, data)
        if self._data_dir is not None:
            await asyncio.to_thread(_mirror, self._data_dir / "artifacts", key, data)
        await self._events.append(
            order_event(
                ARTIFACT_STORED,
                order,
                # one event per artifact per attempt: a redelivered attempt appends nothing new
                event_id=f"{order.task_id}:artifact:{order.attempt}:{path}",
                actor=actor,
                data=msgspec.to_builtins(ref),
            ),
            msg_id=guard_id(order.token, f"{order.task_id}:artifact:{order.attempt}:{path}"),
        )
        return ref

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (ArtifactNotFound if there are none).

        Read here rather than by ``ObjectStore.get``, which looks its stream up by subject
        (``STREAM.NAMES``, a list of every stream): naming the stream, an app's NATS user
        needs no such permission.
        """
        try:
            info = await (await self.bucket()).get_info(key)
        except NotFoundError:  # also ObjectNotFoundError, and a missing bucket
            raise ArtifactNotFound(f"no artifact {key!r}") from None
        if not info.size:
            return b""
        sub = await self._js.subscribe(
            f"$O.{ARTIFACT_BUCKET}.C.{info.nuid}",
            stream=f"OBJ_{ARTIFACT_BUCKET}",
            ordered_consumer=True,
        )
        data = bytearray()
        try:
            for _ in range(info.chunks or 0):
                data += (await sub.next_msg(timeout=CHUNK_TIMEOUT_S)).data
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if len(data) != info.size or (info.digest and info.digest != digest):
            raise ArtifactNotFound(f"artifact {key!r} is incomplete or corrupt in the store")
        return bytes(data)


def _mirror(root: Path, key: str, data: bytes) -> None:
    # write-then-rename so a reader never sees half a file
    target = root.joinpath(*key.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
