"""Workers: actors that execute one attempt of a task and report back to the dispatcher.

A worker subclass implements ``run(order, ctx) -> Outcome`` (a decorated ``@app.agent``
handler is one, ``cogo.sdk.agent``); this module decodes the work order, enforces the TTL
and the per-attempt timeout, and publishes a ``WorkResult`` to its route's own subject of
``RESULTS``, ``results.<route>`` (under ``--auth`` no other app may publish there), with
``Nats-Msg-Id = <task_id>:<attempt>:result`` (guarded by the task's token under ``--auth``,
so nobody else can take the id first: ``cogo.streams.seal``). That id fences results: a paused "zombie"
worker whose order was redelivered to another worker reports the same attempt again, and
the stream drops the second report (docs/design.md §9, nats-server #4786). Retry decisions are not
made here: the dispatcher owns them.

An attempt that is still running ``[actors] started_event_after_ms`` after its claim is
announced with one ``execute_started`` event (``GET /api/tasks/{id}`` then says
``running``); quicker attempts cost no event at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from cogo import tracing
from cogo.config import Config
from cogo.errors import (
    AttemptTimeout,
    CogoError,
    ConfigError,
    InvalidResult,
    TaskCancelled,
    TtlExpired,
    WorkerError,
)
from cogo.rollouts.canary import versioned_routes
from cogo.runtime.base import Actor, Delivery
from cogo.runtime.records import is_cancelled, record_key
from cogo.runtime.waiters import Waiters
from cogo.sdk.app import AgentSpec
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.durable import Suspend
from cogo.sdk.llm import LlmClient
from cogo.sdk.worker import Worker
from cogo.streams.artifacts import ArtifactStore
from cogo.streams.catalogue import EXECUTE_STARTED, ExecuteStarted
from cogo.streams.commands import CANCEL_SUBJECT
from cogo.streams.envelope import (
    CALL_KEY,
    MSG_ID,
    Usage,
    Waiting,
    WorkOrder,
    WorkResult,
    decode_order,
    encoder,
    result_subject,
)
from cogo.streams.events import iso, order_event
from cogo.streams.seal import guard_id
from cogo.streams.topology import SUSPENSION_BUCKET

log = logging.getLogger(__name__)


class WorkerRunner(Actor):
    """Runs the attempts of one agent: joined with its ``cogo.Worker`` class by ``build``."""

    route: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started_after_s = self.config.actors.started_event_after_ms / 1000.0
        self._max_result_bytes = self.config.actors.max_result_bytes
        self._announcing: set[asyncio.Task[Any]] = set()
        self.llm_client = LlmClient(self.config)
        # large step results; a worker that stores artifacts of its own replaces it
        self.artifacts = ArtifactStore(self.js, None, self.events)
        self.waiters = Waiters(self.nc)
        self._running: dict[str, list[TaskContext]] = {}
        self._cancel_sub: Any = None
        self._suspensions: Any = None  # the KV bucket, opened on first use

    def default_routes(self) -> list[str]:
        return [self.route]

    async def start(self) -> None:
        # a versioned worker (--version v2) consumes <route>.<version>: the canary's subject
        self.routes = await versioned_routes(self)
        self._cancel_sub = await self.nc.subscribe(CANCEL_SUBJECT, cb=self._on_cancel)
        await super().start()

    async def stop(self, grace: float = 30.0) -> None:
        await super().stop(grace)
        await self.waiters.stop()
        if self._cancel_sub is not None:
            with contextlib.suppress(Exception):
                await self._cancel_sub.unsubscribe()
        await self.llm_client.aclose()

    async def _cancelled(self, task_id: str) -> bool:
        """Whether the dispatcher recorded a cancel of ``task_id`` (cogo.runtime.suspension)."""
        if self._suspensions is None:
            self._suspensions = await self.js.key_value(SUSPENSION_BUCKET)
        try:
            entry = await self._suspensions.get(record_key(task_id))
        except KeyNotFoundError:
            return False
        return is_cancelled(entry.value)

    async def _on_cancel(self, msg: Any) -> None:
        """A task was cancelled: its running handlers get CancelledError at their next await."""
        for ctx in self._running.get(msg.data.decode(errors="replace"), ()):
            if ctx._task is not None and not ctx._cancel_requested:
                ctx._cancel_requested = True
                ctx._task.cancel()

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        raise NotImplementedError  # the agent's (cogo.Worker.run), first in the joined class

    async def handle(self, delivery: Delivery) -> None:
        order = decode_order(delivery.data)  # MalformedMessage -> dead letter
        started = time.time()
        outcome: Outcome | None = None
        error: CogoError | None = None
        suspended: list[Waiting] | None = None
        ctx = TaskContext(self, delivery, order)
        ctx._task = asyncio.current_task()
        running = self._running.setdefault(order.task_id, [])
        running.append(ctx)
        announce = None
        if self._started_after_s >= 0:
            announce = asyncio.get_running_loop().call_later(self._started_after_s, self._announce, order, delivery)
        try:
            if started > order.deadline:
                raise TtlExpired(f"task expired {started - order.deadline:.3f}s before a worker claimed it")
            if CALL_KEY in order.payload and await self._cancelled(order.task_id):
                # a child whose parent's cancel reached it in the queue: it never runs
                ctx._cancel_requested = True
                raise TaskCancelled("the task was cancelled before it ran")
            budget = max(0.0, ctx.deadline - started)
            try:
                async with asyncio.timeout(budget):
                    with _attempt_span(order, delivery):
                        outcome = await self.run(order, ctx)
            except TimeoutError:
                if time.time() >= order.deadline:
                    raise TtlExpired("task reached its TTL while running") from None
                raise AttemptTimeout(
                    f"attempt {order.attempt} ran past timeout_ms={order.assignment.timeout_ms}"
                ) from None
        except Suspend:
            suspended = list(ctx._calls.waiting.values())
        except asyncio.CancelledError:
            if not ctx._cancel_requested:
                raise  # the worker is stopping: the message is redelivered
            if ctx._task is not None:
                ctx._task.uncancel()
            error = TaskCancelled("the task was cancelled while its handler ran")
        except CogoError as exc:
            error = exc
        except BaseExceptionGroup as group:  # a TaskGroup of the handler's
            if group.subgroup(Suspend) is not None:
                suspended = list(ctx._calls.waiting.values())
            else:
                log.exception("%s: %s attempt %d raised", self.name, order.task_id, order.attempt)
                error = WorkerError(f"{type(group).__name__}: {group}")
        except Exception as exc:  # a bug or unexpected failure in the handler: retryable
            log.exception("%s: %s attempt %d raised", self.name, order.task_id, order.attempt)
            error = WorkerError(f"{type(exc).__name__}: {exc}")
        finally:
            if announce is not None:
                announce.cancel()
            running.remove(ctx)
            if not running:
                del self._running[order.task_id]
            if ctx._durable is not None:
                ctx._durable.release()
        if ctx._cancel_requested and error is None:
            # it returned before its next await: the cancel still wins
            outcome, suspended = None, None
            error = TaskCancelled("the task was cancelled while its handler ran")
        duration_ms = (time.time() - started) * 1000.0
        # what the attempt spent: reported through ctx, by a class-based worker's Outcome, or
        # carried by the exception of a failed attempt (it still spent tokens)
        usage = ctx.usage + (outcome.usage if outcome is not None else getattr(error, "usage", None) or Usage())
        usage = Usage(tokens=usage.tokens, cost_usd=usage.cost_usd, duration_ms=duration_ms)
        emitted = ctx.emitted > 0
        report = self._report(order, delivery, outcome, error, usage, duration_ms, emitted)
        if ctx._durable is not None and ctx._durable.used:
            report = msgspec.structs.replace(
                report,
                durable=True,
                suspended=suspended,
                cancelled=ctx._cancel_requested,
                children=ctx._calls.pending_children or None,
                tree_usage=ctx._calls.tree_usage,
            )
        elif ctx._cancel_requested:
            report = msgspec.structs.replace(report, cancelled=True)
        data = encoder.encode(report)
        if outcome is not None and len(data) > self._max_result_bytes:
            error = InvalidResult(
                f"the result is {len(data):,} bytes encoded, over the {self._max_result_bytes:,}"
                " bytes a result may have on the bus: store large output as an artifact "
                "(the object store) and return its key"
            )
            report = self._report(order, delivery, None, error, usage, duration_ms, emitted)
            data = encoder.encode(report)
        self.counters["succeeded" if error is None else "failed"] += 1
        # one result per run: a suspended run reports under its resume number, so the
        # final report of a resumed attempt is still fenced like any other
        msg_id = f"{order.task_id}:{order.attempt}:result"
        if suspended is not None:
            msg_id = f"{order.task_id}:{order.attempt}:suspended:{order.resumes}"
            self.counters["suspended"] += 1
        # through the actor's publisher: the same stream ack, for less CPU than js.publish
        msg_id = guard_id(order.token, msg_id)
        (ack,) = await self.publish_all([(result_subject(order.route), data, {MSG_ID: msg_id})])
        if ack.duplicate:
            # another worker already reported this attempt (our claim had lapsed): fenced off
            self.counters["fenced"] += 1
            log.warning(
                "late result for %s attempt %d fenced off (already reported)",
                order.task_id,
                order.attempt,
            )

    def _report(
        self,
        order: WorkOrder,
        delivery: Delivery,
        outcome: Outcome | None,
        error: CogoError | None,
        usage: Usage,
        duration_ms: float,
        emitted: bool = False,
    ) -> WorkResult:
        return WorkResult(
            order=order,
            ok=error is None,
            actor=self.name,
            claimed_at=delivery.claimed_at,
            queue_wait_ms=round(delivery.queue_wait_ms, 3),
            duration_ms=round(duration_ms, 3),
            delivery=delivery.delivered,
            result=outcome.result if outcome is not None and error is None else None,
            usage=usage,
            error_code=error.code if error else None,
            error=str(error) if error else None,
            retryable=error.retryable if error else True,
            version=self.version,
            detail=error.detail if error is not None else None,
            emitted=emitted,
        )

    def _announce(self, order: WorkOrder, delivery: Delivery) -> None:
        """The attempt is still running: record ``execute_started`` (once per attempt)."""
        event = order_event(
            EXECUTE_STARTED,
            order,
            # a resumed run of the attempt is announced too (its own id)
            event_id=f"{order.task_id}:started:{order.attempt}" + (f":{order.resumes}" if order.resumes else ""),
            actor=self.name,
            queue_wait_ms=round(delivery.queue_wait_ms, 3),
            version=self.version or order.version,
            data=ExecuteStarted(claimed_at=iso(delivery.claimed_at), delivery=delivery.delivered),
        )
        task = asyncio.ensure_future(self.events.append(event, msg_id=guard_id(order.token, event.event_id)))
        self._announcing.add(task)
        task.add_done_callback(self._announced)

    def _announced(self, task: asyncio.Task[Any]) -> None:
        self._announcing.discard(task)
        if not task.cancelled() and task.exception() is not None:  # informational: never fatal
            log.warning("%s: execute_started not recorded: %s", self.name, task.exception())


def _attempt_span(order: WorkOrder, delivery: Delivery) -> Any:
    """The attempt's span, child of the task span whose ``traceparent`` the dispatcher sent
    (computed from the order when a message came without it)."""
    if not tracing.enabled():
        return tracing.span("")
    parent = delivery.headers.get(tracing.TRACEPARENT) or tracing.task_traceparent(order.task_id, order.traceparent)
    return tracing.span(
        f"attempt {order.route}",
        parent=parent,
        kind="consumer",
        attributes={
            "cogo.task_id": order.task_id,
            "cogo.route": order.route,
            "cogo.attempt": order.attempt,
            "cogo.delivery": delivery.delivered,
        },
    )


def actor_class(spec: AgentSpec) -> type[Actor]:
    """The class that runs ``spec``: a runtime actor as it is, an agent joined with the runner."""
    if spec.handler is not None:
        from cogo.sdk.agent import FunctionAgent

        target: type[Any] = FunctionAgent
    elif isinstance(spec.target, str):
        module, _, attr = spec.target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    else:
        target = spec.target
    return as_actor(target, f"agent {spec.name!r}")


def as_actor(target: type[Any], what: str = "") -> type[Actor]:
    """``target`` as an actor class: a runtime actor (or component with ``start`` and
    ``stop``, such as the projector) as it is, a ``cogo.Worker`` joined with the runner
    (once per class)."""
    if issubclass(target, Actor):
        return target
    if issubclass(target, Worker):
        return _joined(target)
    if callable(getattr(target, "start", None)) and callable(getattr(target, "stop", None)):
        return target
    raise ConfigError(f"{what or 'a class'}: {target!r} is neither a cogo.Worker nor an actor")


_JOINED: dict[type[Worker], type[WorkerRunner]] = {}


def _joined(agent: type[Worker]) -> type[WorkerRunner]:
    # the agent first: its run, hooks and attributes win; the runner does the rest
    if agent in _JOINED:
        return _JOINED[agent]
    namespace = {
        "__module__": agent.__module__,
        "__qualname__": agent.__qualname__,
        "__doc__": agent.__doc__,
    }
    joined: type[WorkerRunner] = type(agent.__name__, (agent, WorkerRunner), namespace)
    _JOINED[agent] = joined
    return joined


def build(
    spec: AgentSpec,
    nc: NATS,
    config: Config,
    *,
    version: str | None = None,
    concurrency: int | None = None,
    data_dir: Any = None,
) -> Actor:
    """A ready-to-start actor of agent ``spec`` on connection ``nc``."""
    cls = actor_class(spec)
    if spec.handler is None and "kind" not in vars(cls) and cls.kind != spec.name:
        # a user's class that does not name itself: its agent name is its kind (actor ids)
        cls = type(cls.__name__, (cls,), {"kind": spec.name})
    kwargs: dict[str, Any] = {
        "concurrency": concurrency or spec.concurrency,
        "version": version,
    }
    if spec.handler is not None:
        kwargs["spec"] = spec
    elif spec.routes and list(spec.routes) != [getattr(cls, "route", None)]:
        kwargs["routes"] = list(spec.routes)  # declared elsewhere than the class says
    if getattr(cls, "needs_data_dir", False):
        kwargs["data_dir"] = data_dir
    return cls(nc, config, **kwargs)
