"""A live, decoded view of a JetStream KV bucket (or one key prefix of it).

Dispatchers read route policies and rollout splits on every task; a watch keeps a local
copy current without a request per task. A value that fails to decode is logged and the
last good one kept, so a bad write never takes enforcement down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec
from nats.js.kv import KeyValue

from cogo.aio import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")


class KvView(Generic[T]):
    """``items`` mirrors the bucket's keys under ``prefix`` (prefix stripped), decoded."""

    def __init__(
        self,
        open_bucket: Callable[[], Awaitable[KeyValue]],
        decode: Callable[[bytes], T],
        *,
        prefix: str = "",
        name: str = "kv-watch",
    ) -> None:
        self._open_bucket = open_bucket
        self._decode = decode
        self._prefix = prefix
        self._name = name
        self.items: dict[str, T] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        """Load the current values, then keep following changes."""
        kv = await self._open_bucket()
        watcher = await (kv.watch(self._prefix + ">") if self._prefix else kv.watchall())
        self._task = asyncio.create_task(self._follow(watcher), name=self._name)
        await asyncio.wait_for(self._loaded.wait(), timeout)

    async def _follow(self, watcher: Any) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # end of the initial values
                    self._loaded.set()
                    continue
                key = entry.key[len(self._prefix) :]
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self.items.pop(key, None)
                    continue
                try:
                    self.items[key] = self._decode(entry.value)
                except msgspec.DecodeError as exc:  # keep the last good value
                    log.error("%s: ignoring invalid value for %s: %s", self._name, key, exc)
        finally:
            self._loaded.set()
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
