"""Schedules of workflow runs: what they are, when they tick, where they are kept.

A schedule is ``{id, workflowId, parameters, cron | interval_s, catchup, max_catchup}``:

- ``cron``: a cron expression (5 fields, or 6 with seconds last), parsed by croniter, in
  UTC; ``interval_s``: every N seconds from the moment the schedule was stored;
- one run per tick, run id ``<schedule id>:<tick, UTC ISO, whole seconds>``; firing a tick
  twice (a restart between the start and the cursor write, two schedulers during a lease
  handover) starts nothing twice: the start command is de-duplicated by its
  ``Nats-Msg-Id`` and an orchestrator never starts a run id that is already in the log;
- ``catchup``, for ticks that came due while no scheduler ran: ``"none"`` fires only a tick
  at most ``ON_TIME_S`` late, ``"last"`` (default) the latest missed tick, ``"all"`` every
  missed tick, oldest first, at most ``max_catchup`` of them (the newest; the others are
  counted as skipped).

Both the definition (``spec.<id>``) and the cursor (``cursor.<id>``: the last tick fired,
counts, the last error) live in the JetStream KV bucket ``schedules``: the facade writes
specs, the scheduler (``cogo.workflows.scheduler``) writes cursors with compare-and-set.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Literal

import pydantic
from croniter import croniter
from nats.js.client import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue
from pydantic import ConfigDict, Field

from cogo.streams.topology import SCHEDULE_BUCKET
from cogo.workflows.definition import WORKFLOW_ID

SCHEDULE_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ON_TIME_S = 10.0
# enumerating missed cron ticks stops here (a schedule down for years, every second)
MAX_ENUMERATED = 100_000
UTC = dt.UTC


def _not_null(schema: dict[str, Any]) -> None:
    """In the published schema: a field that may be left out but, when given, is not null."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if branches:
        schema.update(branches[0])
    schema.pop("default", None)


class ScheduleSpec(pydantic.BaseModel):
    """A schedule as submitted (``POST /api/schedules``): exactly one of ``cron`` and
    ``interval_s``."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={"oneOf": [{"required": ["cron"]}, {"required": ["interval_s"]}]},
    )

    id: str = Field(pattern=SCHEDULE_ID)
    workflow_id: str = Field(alias="workflowId", pattern=WORKFLOW_ID)
    parameters: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = Field(None, max_length=200, json_schema_extra=_not_null)
    interval_s: int | None = Field(None, ge=1, le=366 * 86400, json_schema_extra=_not_null)
    catchup: Literal["none", "last", "all"] = "last"
    max_catchup: int = Field(100, ge=1, le=10_000)

    @pydantic.field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value, strict=True):
            raise ValueError(f"{value!r} is not a valid cron expression (5 fields, or 6 with seconds last)")
        return value

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("cron", "interval_s"):
                if key in data and data[key] is None:
                    raise ValueError(f"{key} must not be null (leave it out instead)")
        return data

    @pydantic.model_validator(mode="after")
    def _one_clock(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give exactly one of `cron` or `interval_s`")
        return self


class Schedule(pydantic.BaseModel):
    """A stored schedule: the spec and when it was stored (the anchor of ``interval_s``)."""

    spec: ScheduleSpec
    created_at: float  # unix seconds, whole

    def view(self) -> dict[str, Any]:
        return {**self.spec.model_dump(by_alias=True, exclude_none=True), "createdAt": iso(self.created_at)}


class Cursor(pydantic.BaseModel):
    """Where a schedule's ticks stand: only the scheduler writes it."""

    last_tick: float | None = None
    fired: int = 0
    skipped: int = 0
    failed: int = 0
    last_run_id: str | None = None
    last_error: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "lastTick": iso(self.last_tick) if self.last_tick is not None else None,
            "fired": self.fired,
            "skipped": self.skipped,
            "failed": self.failed,
            "lastRunId": self.last_run_id,
            "lastError": self.last_error,
        }


def iso(ts: float) -> str:
    """A tick as it appears in run ids: UTC, whole seconds, ``Z``."""
    return dt.datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_id_of(schedule_id: str, tick: float) -> str:
    return f"{schedule_id}:{iso(tick)}"


# -- ticks -------------------------------------------------------------------------------


def ticks(schedule: Schedule, after: float, until: float, limit: int) -> tuple[list[float], int]:
    """Ticks in ``(after, until]``: the last ``limit`` of them, and how many came before."""
    spec = schedule.spec
    if spec.interval_s is not None:
        step, anchor = spec.interval_s, int(schedule.created_at)
        first = anchor + (math.floor((after - anchor) / step) + 1) * step
        if first > until:
            return [], 0
        count = math.floor((until - first) / step) + 1
        start = max(0, count - limit)
        return [float(first + k * step) for k in range(start, count)], start
    assert spec.cron is not None  # a spec has an interval or a cron expression
    it = croniter(spec.cron, dt.datetime.fromtimestamp(after, UTC))
    found: list[float] = []
    seen = 0
    while seen < MAX_ENUMERATED:
        tick = it.get_next(dt.datetime).timestamp()
        if tick > until:
            break
        found.append(tick)
        seen += 1
        if len(found) > limit:
            found.pop(0)
    return found, seen - len(found)


def next_tick(schedule: Schedule, after: float) -> float:
    """The first tick after ``after``."""
    spec = schedule.spec
    if spec.interval_s is not None:
        step, anchor = spec.interval_s, int(schedule.created_at)
        return float(anchor + (math.floor((after - anchor) / step) + 1) * step)
    assert spec.cron is not None  # a spec has an interval or a cron expression
    it = croniter(spec.cron, dt.datetime.fromtimestamp(after, UTC))
    return float(it.get_next(dt.datetime).timestamp())


def due(schedule: Schedule, cursor: Cursor, now: float) -> tuple[list[float], int, float | None]:
    """The ticks to fire now (oldest first), how many missed ones the policy skips, and the
    latest tick due (where the cursor moves to; None if nothing is due)."""
    spec = schedule.spec
    after = cursor.last_tick if cursor.last_tick is not None else schedule.created_at
    limit = spec.max_catchup if spec.catchup == "all" else 1
    found, before = ticks(schedule, after, now, limit)
    if not found:
        return [], 0, None
    if spec.catchup == "none":
        on_time = [t for t in found if now - t <= ON_TIME_S]
        return on_time, before + len(found) - len(on_time), found[-1]
    return found, before, found[-1]


# -- the store ---------------------------------------------------------------------------


class ScheduleStore:
    """Schedules and their cursors in the ``schedules`` KV bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(SCHEDULE_BUCKET)
        return self._kv

    async def put(self, spec: ScheduleSpec, now: float) -> tuple[Schedule, bool]:
        """Store (or replace) a schedule; True if it is new. A replaced schedule keeps its
        cursor: ticks up to the last one fired do not fire again."""
        kv = await self.kv()
        created = await self.get(spec.id) is None
        schedule = Schedule(spec=spec, created_at=float(int(now)))
        # without nulls: the spec refuses an explicit null for the clock it does not use
        await kv.put(f"spec.{spec.id}", schedule.model_dump_json(exclude_none=True).encode())
        return schedule, created

    async def get(self, schedule_id: str) -> Schedule | None:
        kv = await self.kv()
        try:
            entry = await kv.get(f"spec.{schedule_id}")
        except (KeyNotFoundError, NotFoundError):
            return None
        return Schedule.model_validate_json(entry.value or b"{}")

    async def ids(self) -> list[str]:
        kv = await self.kv()
        # a watch on spec.> alone (KeyValue.keys() would read every key, cursors too)
        watcher = await kv.watch("spec.>", ignore_deletes=True, meta_only=True)
        found = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                found.append(entry.key.removeprefix("spec."))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: unannotated
        return sorted(found)

    async def delete(self, schedule_id: str) -> bool:
        """Remove a schedule and its cursor; False if there was none."""
        if await self.get(schedule_id) is None:
            return False
        kv = await self.kv()
        await kv.delete(f"spec.{schedule_id}")
        await kv.delete(f"cursor.{schedule_id}")
        return True

    async def cursor(self, schedule_id: str) -> tuple[Cursor, int]:
        """A schedule's cursor and its revision (0: never written)."""
        kv = await self.kv()
        try:
            entry = await kv.get(f"cursor.{schedule_id}")
        except (KeyNotFoundError, NotFoundError):
            return Cursor(), 0
        return Cursor.model_validate(json.loads(entry.value or b"{}")), entry.revision or 0

    async def save_cursor(self, schedule_id: str, cursor: Cursor, revision: int) -> int | None:
        """Write the cursor if it is still at ``revision``; its new revision, or None if
        somebody else moved it (then read it again)."""
        kv = await self.kv()
        data = cursor.model_dump_json().encode()
        try:
            if revision:
                return await kv.update(f"cursor.{schedule_id}", data, last=revision)
            return await kv.create(f"cursor.{schedule_id}", data)
        except KeyWrongLastSequenceError:
            return None
