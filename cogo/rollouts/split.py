"""Rollout state in the JetStream KV bucket ``rollouts``, watched live by dispatchers.

Two kinds of keys:

- ``route.<route>`` -> ``RouteSplit``: how the dispatcher splits a route's tasks between
  its baseline workers and a candidate version (what the dispatcher reads, per task);
- ``rollout.<id>`` -> ``Rollout``: one rollout's whole record (stages, gate figures), what
  ``/api/rollouts`` shows; written only by the rollout controller.

A versioned worker (``cogo run echo --version v2``) consumes ``<route>.<version>``; an
unversioned one is the baseline on ``<route>`` itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from cogo.streams.kvview import KvView

log = logging.getLogger(__name__)

from cogo.streams.topology import ROLLOUT_BUCKET, ensure_kv  # noqa: E402

SPLIT_PREFIX = "route."
RECORD_PREFIX = "rollout."

# rollout statuses; the last two are final
RUNNING, PAUSED, PROMOTED, ROLLED_BACK = "running", "paused", "promoted", "rolled_back"
FINAL = frozenset({PROMOTED, ROLLED_BACK})


class RouteSplit(msgspec.Struct, frozen=True):
    """How one route's tasks are split between its baseline and a candidate version."""

    route: str
    baseline: str | None = None  # None: the unversioned workers on <route>
    candidate: str | None = None
    percent: int = 0  # share of tasks (by task-id hash) sent to the candidate
    rollout_id: str | None = None


class Gate(msgspec.Struct, frozen=True):
    """One gate's verdict and the figures it was decided on."""

    name: str
    passed: bool
    detail: str
    candidate: float | None = None
    baseline: float | None = None
    limit: float | None = None


class Stage(msgspec.Struct):
    """One stage of a rollout as it ran."""

    name: str
    status: str  # running / passed / failed / aborted
    started_at: str
    percent: int = 0
    ended_at: str | None = None
    samples: dict[str, Any] = msgspec.field(default_factory=dict)
    gates: list[Gate] = msgspec.field(default_factory=list)


class Rollout(msgspec.Struct):
    """A rollout of ``candidate`` on ``route``, through Dev E2E, CI smoke, canary, promote."""

    id: str
    route: str
    candidate: str
    created_at: str
    updated_at: str
    baseline: str | None = None
    status: str = RUNNING
    stage: str = ""
    percent: int = 0
    slo_p90_ms: float | None = None
    min_samples: int = 20
    canary_percent: int = 10
    dev_e2e_tasks: int = 5
    smoke_tasks: int = 20
    stage_timeout_s: float = 300.0
    sample_payload: dict[str, Any] = msgspec.field(default_factory=dict)
    # {"workflowId", "parameters"}: Dev E2E runs this workflow instead of sample tasks
    dev_e2e_workflow: dict[str, Any] | None = None
    reason: str | None = None
    stages: list[Stage] = msgspec.field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def view(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


_encoder = msgspec.json.Encoder()
_split_decoder = msgspec.json.Decoder(RouteSplit)
_rollout_decoder = msgspec.json.Decoder(Rollout)


async def bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The ``rollouts`` bucket, created if missing."""
    return await ensure_kv(js, ROLLOUT_BUCKET, history=8, replicas=replicas)


class RolloutStore:
    """Reads and writes rollout records and route splits (the controller's side)."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await bucket(self._js, self._replicas)
        return self._kv

    async def split(self, route: str) -> RouteSplit:
        kv = await self.kv()
        try:
            entry = await kv.get(SPLIT_PREFIX + route)
        except KeyNotFoundError:
            return RouteSplit(route=route)
        return _split_decoder.decode(entry.value or b"")

    async def put_split(self, split: RouteSplit) -> None:
        await (await self.kv()).put(SPLIT_PREFIX + split.route, _encoder.encode(split))

    async def get(self, rollout_id: str) -> Rollout | None:
        kv = await self.kv()
        try:
            entry = await kv.get(RECORD_PREFIX + rollout_id)
        except KeyNotFoundError:
            return None
        return _rollout_decoder.decode(entry.value or b"") if entry.value else None

    async def put(self, rollout: Rollout) -> None:
        await (await self.kv()).put(RECORD_PREFIX + rollout.id, _encoder.encode(rollout))

    async def all(self) -> list[Rollout]:
        """Every rollout record, oldest first."""
        kv = await self.kv()
        try:
            keys = await kv.keys()  # (nats-py's `filters` are substrings, not subjects)
        except (NoKeysError, NotFoundError):  # nats-py raises on an empty bucket
            return []
        keys = [k for k in keys if k.startswith(RECORD_PREFIX)]
        rollouts = [r for r in await asyncio.gather(*(self._get_key(kv, k) for k in keys)) if r]
        return sorted(rollouts, key=lambda r: r.created_at)

    @staticmethod
    async def _get_key(kv: KeyValue, key: str) -> Rollout | None:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return _rollout_decoder.decode(entry.value) if entry.value else None


class SplitWatch:
    """Live view of every route's split, kept current by a KV watch (dispatcher side)."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self._view: KvView[RouteSplit] = KvView(
            lambda: bucket(js, replicas),
            _split_decoder.decode,
            prefix=SPLIT_PREFIX,
            name="rollout-watch",
        )
        self.splits = self._view.items

    async def start(self) -> None:
        await self._view.start()

    async def stop(self) -> None:
        await self._view.stop()
