"""Durable steps: ``await ctx.step(name, fn, *args)`` (docs/design.md §11).

The first successful result of step ``name`` of a task is journaled in the event log, as a
``step_completed`` event with ``event_id = <task_id>:step:<name>``, before ``step`` returns.
Any later attempt, or a redelivery after the worker died, gets the journaled result (its
JSON form) without running ``fn`` again or charging its usage again. ``step`` returns the
JSON form the first time too, so a handler sees the same value either way.

Finding a task's journal. A subject per task (``events.step_completed.<task_id>``, or a KV
key per task) would make the lookup one direct get, but JetStream keeps an index entry per
distinct subject for as long as the stream retains it (``EVENTS``: 30 days by default), in
memory: every agent task of a month would pay for it. Instead the journal rides on
``events.step_completed.<route>.<bucket>``, ``bucket = crc32(task_id) % 64``: a fixed 64
subjects per route, whatever the traffic. The lookup is then a scan of that one subject from
the task's submission on, which costs what the route journaled since (a 64th of it), and it
happens only when a journal can exist: the first delivery of the first attempt (almost all
of them) never looks, and a handler that never calls ``ctx.step`` never looks either. The
scan does not depend on ``Nats-Msg-Id`` de-duplication, so a task retried after its journal
outlived the duplicate window still finds it; should two deliveries of one attempt (a
"zombie" and its replacement) journal the same step, the first in the stream wins, for them
and for every later reader.

- A step that raises is not journaled: the next attempt runs it again.
- A result with no JSON form is ``step.result_invalid``, naming the step.
- A name that already ran in this attempt is ``step.name_reused``: names must be unique per
  task (``f"tool:{turn}:{call.id}"``), or replay could not tell two steps apart.
- A result larger than ``[runtime] step_inline_max_bytes`` goes to the object store
  (``<task_id>/steps/<name>.json``); the journal keeps the reference.
- Steps do not nest (``step.nested``): an inner step's usage would be charged twice.

Durable agents (``cogo.sdk.durable``) journal more: signals (``task_signaled``) and
children (``call_started``, ``call_completed``) on ``events.<type>.<route>.<bucket>``, like
steps (the dispatcher, who writes signals and children's ends, knows the task's route). A
resumed run reads them with one single-filter scan per subject, at the same time as its
steps: under ``--auth`` an app may read, and append ``call_started`` to, its own routes'
subjects only, and an entry naming another route counts for nothing. Each step also records
its place in the run (``seq``), so a replay that asks for something else there is
``task.nondeterministic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
from nats.js import api

from cogo import tracing
from cogo.errors import (
    StepNameInvalid,
    StepNameReused,
    StepNested,
    StepResultInvalid,
    TaskNondeterministic,
    WorkerError,
)
from cogo.streams.catalogue import (
    CALL_COMPLETED,
    CALL_STARTED,
    STEP_COMPLETED,
    TASK_SIGNALED,
    CallCompleted,
    CallStarted,
    StepCompleted,
    TaskSignaled,
    data_of,
)
from cogo.streams.envelope import MSG_ID, Usage, new_id
from cogo.streams.events import decode_event, encode_event, iso, order_event
from cogo.streams.seal import guard_id
from cogo.streams.topology import EVENTS

if TYPE_CHECKING:
    from cogo.sdk.context import TaskContext

JOURNAL_BUCKETS = 64
MAX_NAME_CHARS = 200
CLOCK_SLACK_S = 5.0  # scan from a little before the submission (server clocks drift)
SCAN_IDLE_S = 10.0  # a journal scan that receives nothing this long has failed


@dataclass
class StepScope:
    """The step running in this context, and the usage reported inside it."""

    name: str
    tokens: int = 0
    cost_usd: float = 0.0


_current: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar("cogo_step", default=None)


def current_step() -> str | None:
    """The name of the step running in this context (``llm_call`` events record it)."""
    scope = _current.get()
    return scope.name if scope is not None else None


def charge_step(tokens: int, cost_usd: float) -> None:
    """Add usage reported through ``ctx.report_usage`` to the running step, if any."""
    scope = _current.get()
    if scope is not None:
        scope.tokens += tokens
        scope.cost_usd += cost_usd


def journal_subject(route: str, task_id: str) -> str:
    """Where the steps of ``task_id`` are journaled: one of 64 subjects of its route."""
    bucket = zlib.crc32(task_id.encode()) % JOURNAL_BUCKETS
    return f"events.{STEP_COMPLETED}.{route}.{bucket}"


def task_bucket(task_id: str) -> int:
    return zlib.crc32(task_id.encode()) % JOURNAL_BUCKETS


def durable_subject(type: str, route: str, task_id: str) -> str:
    """Where a task's signals and calls are journaled: ``events.<type>.<route>.<bucket>``,
    64 subjects per type and route, as for steps."""
    return f"events.{type}.{route}.{task_bucket(task_id)}"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise StepNameInvalid(f"step name {name!r}: give a non-empty string of at most {MAX_NAME_CHARS} characters")
    if not name.isprintable():
        raise StepNameInvalid(f"step name {name!r} holds characters that are not printable")
    return name


@dataclass(frozen=True)
class Journaled:
    """One journaled step: its result (or artifact reference), who ran it, what it cost."""

    name: str
    attempt: int
    delivery: int
    usage: Usage
    result: Any = None
    artifact: str | None = None
    run: int = 0  # the order's ``resumes`` when it was journaled


class Journal:
    """The journaled steps of one task, as one attempt sees them (loaded at most once)."""

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx
        self._steps: dict[str, Journaled] | None = None
        self.names: set[str] = set()  # steps this attempt asked for (unique per attempt)
        self.replayed = 0
        # durable agents: signals sent to the task (the first of a name), the children it
        # started and those that ended, and which request each journaled seq was
        self.signals: dict[str, Any] = {}
        self.started: dict[str, CallStarted] = {}
        self.completed: dict[str, CallCompleted] = {}
        self.by_seq: dict[int, str] = {}
        self._durable_loaded = False

    @property
    def may_exist(self) -> bool:
        """Whether an earlier attempt, delivery or run could have journaled anything."""
        o = self._ctx.order
        return o.attempt > 1 or self._ctx._delivery.delivered > 1 or o.resumes > 0

    async def get(self, name: str, *, reload: bool = False) -> Journaled | None:
        if self._steps is None and not self.may_exist and not reload:
            return None
        if reload:
            self._steps = await self._load()
        elif self._steps is None:
            if self._ctx.order.resumes > 0:
                await self.load()  # a resumed run: its calls and signals too
            else:
                self._steps = await self._load()
        assert self._steps is not None
        return self._steps.get(name)

    async def load(self) -> None:
        """Read the whole journal now (steps, signals, calls) if this run has not yet: a
        signal may precede the task's first run, so durable requests look even when no
        earlier run could have written. The two scans run at once."""
        if self._steps is None and not self.may_exist:
            self._steps = {}  # no earlier run, attempt or delivery: no step, call or end yet
        steps = self._load() if self._steps is None else None
        durable = self._load_durable() if not self._durable_loaded else None
        if steps is not None and durable is not None:
            self._steps, _ = await asyncio.gather(steps, durable)
        elif steps is not None:
            self._steps = await steps
        elif durable is not None:
            await durable
        self._durable_loaded = True

    def check(self, seq: int, label: str) -> None:
        """``task.nondeterministic`` unless the journal holds ``label`` (or nothing) at ``seq``."""
        had = self.by_seq.get(seq)
        if had is not None and had != label:
            raise TaskNondeterministic(
                f"request #{seq} of the handler is {label}, but the journal has {had} there: "
                "code between steps, calls, sleeps and signals must be deterministic (decide "
                "on journaled values, not on time, randomness or outside state)",
                detail={"seq": seq, "requested": label, "journaled": had},
            )

    async def _load(self) -> dict[str, Journaled]:
        """The task's steps: a scan of its route's journal subject (see the docstring)."""
        found: dict[str, Journaled] = {}
        for _, event in await self._scan(journal_subject(self._ctx.route, self._ctx.task_id)):
            # only the task's own route's subject is read, which under --auth only that
            # route's app may publish to; an entry naming another route is no entry
            if event.type != STEP_COMPLETED or event.route != self._ctx.route:
                continue
            try:
                step = data_of(event, StepCompleted)
            except msgspec.ValidationError:
                continue  # not a journal entry this version can read: never a result
            if step.step not in found:  # the first one wins
                found[step.step] = Journaled(
                    name=step.step,
                    attempt=event.attempt or 0,
                    delivery=step.delivery,
                    usage=event.usage or Usage(),
                    result=step.result,
                    artifact=step.artifact.name if step.artifact else None,
                    run=step.run or 0,
                )
                if step.seq is not None:
                    self.by_seq.setdefault(step.seq, f"step {step.step!r}")
        return found

    async def _load_durable(self) -> None:
        """The task's signals and calls: a scan per subject (one filter each, in the create
        request's subject, which ``--auth`` grants per route), all three at once."""
        ctx = self._ctx
        # a first run of a first attempt can find signals only (sent before it ran): the
        # calls it started, and their ends, were journaled by a run
        types = (TASK_SIGNALED, CALL_STARTED, CALL_COMPLETED) if self.may_exist else (TASK_SIGNALED,)
        scans = await asyncio.gather(*[self._scan(durable_subject(t, ctx.route, ctx.task_id)) for t in types])
        # in stream order across the three subjects (the first of each wins)
        for _, event in sorted((e for found in scans for e in found), key=lambda e: e[0]):
            if event.route != ctx.route:
                continue  # only the task's route's subjects are read: never another's entry
            with contextlib.suppress(msgspec.ValidationError):
                self._durable_entry(event)

    async def _scan(self, subject: str) -> list[tuple[int, Any]]:
        """This task's events on ``subject`` from its submission on, with their stream
        sequences, in stream order. The one filter goes in the create request's subject
        (what ``--auth`` grants by route); the consumer ends after its inactivity threshold
        (a worker may not delete consumers on EVENTS: it could delete anybody's)."""
        ctx = self._ctx
        nc, js = ctx._runtime.nc, ctx._runtime.js
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        found: list[tuple[int, Any]] = []
        try:
            info = await js.add_consumer(
                EVENTS,
                api.ConsumerConfig(
                    name=f"journal-{new_id()}",
                    deliver_subject=inbox,
                    deliver_policy=api.DeliverPolicy.BY_START_TIME,
                    # the server takes RFC 3339 text; nats-py's annotation says datetime
                    opt_start_time=iso(ctx.order.submitted_at - CLOCK_SLACK_S),  # type: ignore[arg-type]
                    ack_policy=api.AckPolicy.NONE,
                    max_deliver=1,
                    inactive_threshold=5.0,
                    mem_storage=True,
                    num_replicas=1,
                    filter_subject=subject,
                ),
            )
            pending = info.num_pending or 0
            while pending > 0:
                try:
                    msg = await sub.next_msg(timeout=SCAN_IDLE_S)
                except Exception as exc:
                    raise WorkerError(f"reading the step journal failed: {exc!r}") from None
                meta = msg.metadata
                pending = meta.num_pending or 0
                event = decode_event(msg.data)
                if event.task_id == ctx.task_id:
                    found.append((meta.sequence.stream, event))
        finally:
            await sub.unsubscribe()
        return found

    def _durable_entry(self, event: Any) -> None:
        """Keep a signal or call entry (the first of each wins, as for steps)."""
        if event.type == TASK_SIGNALED:
            signal = data_of(event, TaskSignaled)
            self.signals.setdefault(signal.name, signal.data)
        elif event.type == CALL_STARTED:
            started = data_of(event, CallStarted)
            if started.child_id not in self.started:
                self.started[started.child_id] = started
                self.by_seq.setdefault(started.seq, f"call {started.key!r}")
        else:
            done = data_of(event, CallCompleted)
            self.completed.setdefault(done.child_id, done)


async def run_step(
    ctx: TaskContext,
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    seq: int | None = None,
) -> Any:
    """``ctx.step``: the journaled result of ``name``, or ``fn``'s, journaled first.

    ``seq`` is the request's place in the handler: a replay that asks for another step
    there is ``task.nondeterministic``."""
    check_name(name)
    if _current.get() is not None:
        raise StepNested(f"step {name!r} was called inside step {current_step()!r}: steps do not nest")
    journal = ctx._journal
    if name in journal.names:
        raise StepNameReused(
            f"step {name!r} already ran in this attempt: give each step of a task its own "
            "name (e.g. f'tool:{turn}:{call.id}')"
        )
    journal.names.add(name)
    done = await journal.get(name)
    if seq is not None:
        journal.check(seq, f"step {name!r}")
    if done is not None:
        return await _replay(ctx, done)
    scope = StepScope(name)
    token = _current.set(scope)
    started = time.time()
    try:
        with tracing.span(f"step {name}", attributes={"cogo.step": name}):
            value = await _call(fn, args, kwargs)
    finally:
        _current.reset(token)
    data = _json_bytes(name, value)
    result = msgspec.json.decode(data)
    if len(data) > ctx._runtime.config.runtime.step_inline_max_bytes:
        ref = await ctx._runtime.artifacts.put(
            ctx.order, f"steps/{quote(name, safe='')}.json", data, actor=ctx._runtime.name
        )
        entry = StepCompleted(
            step=name, delivery=ctx._delivery.delivered, artifact=ref, seq=seq, run=ctx.order.resumes or None
        )
    else:
        entry = StepCompleted(
            step=name, delivery=ctx._delivery.delivered, result=result, seq=seq, run=ctx.order.resumes or None
        )
    event = order_event(
        STEP_COMPLETED,
        ctx.order,
        event_id=f"{ctx.task_id}:step:{name}",
        actor=ctx._runtime.name,
        duration_ms=round((time.time() - started) * 1000.0, 3),
        usage=Usage(tokens=scope.tokens, cost_usd=round(scope.cost_usd, 9)),
        version=ctx.version or ctx.order.version,
        data=entry,
    )
    (ack,) = await ctx._runtime.publish_all(
        [
            (
                journal_subject(ctx.route, ctx.task_id),
                encode_event(event),
                {MSG_ID: guard_id(ctx.order.token, event.event_id)},
            )
        ]
    )
    if ack.duplicate:
        # another delivery of this task journaled the step first (a paused worker whose
        # claim lapsed): its result is the one every reader replays, so return that
        first = await journal.get(name, reload=True)
        if first is not None and first.delivery != ctx._delivery.delivered:
            return await _fetch(ctx, first)
    return result


async def _replay(ctx: TaskContext, done: Journaled) -> Any:
    journal = ctx._journal
    journal.replayed += 1
    if done.attempt == ctx.attempt and done.run == ctx.order.resumes and done.delivery != ctx._delivery.delivered:
        # journaled by a delivery of this run that died before reporting: its usage reached
        # no result yet, so it counts now (once); an earlier attempt's or run's was reported
        ctx.report_usage(tokens=done.usage.tokens, cost_usd=done.usage.cost_usd)
    return await _fetch(ctx, done)


async def _fetch(ctx: TaskContext, done: Journaled) -> Any:
    if done.artifact is None:
        return done.result
    return msgspec.json.decode(await ctx._runtime.artifacts.get(done.artifact))


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    if callable(fn) and inspect.iscoroutinefunction(getattr(fn, "__call__", None)):  # noqa: B004
        return await fn(*args, **kwargs)
    if not callable(fn):
        raise TypeError(f"ctx.step needs a function, not {type(fn).__name__}")
    # a plain function may block (files, subprocesses, CPU): never on the event loop
    # (to_thread copies this context: the step scope is seen there too)
    value = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


def _json_bytes(name: str, value: Any) -> bytes:
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
        value = value.model_dump(mode="json")
    try:
        return msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StepResultInvalid(
            f"step {name!r} returned a {type(value).__name__}, which is not JSON data: {exc}"
        ) from None
