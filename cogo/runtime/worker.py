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
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError

from cogo import tracing
from cogo.errors import (
    AttemptTimeout,
    CogoError,
    CostBudgetExhausted,
    InvalidResult,
    OutputInvalid,
    TaskCancelled,
    TokenBudgetExhausted,
    TtlExpired,
    WorkerError,
)
from cogo.rollouts.canary import versioned_routes
from cogo.runtime.base import Actor, Delivery
from cogo.runtime.suspension import is_cancelled, record_key
from cogo.sdk import durable
from cogo.sdk.durable import Durable, Suspend, Waiters
from cogo.sdk.llm import LlmClient, LlmSession
from cogo.sdk.steps import Journal, charge_step, run_step
from cogo.streams.artifacts import ArtifactStore
from cogo.streams.catalogue import EXECUTE_STARTED, ExecuteStarted
from cogo.streams.commands import CANCEL_SUBJECT
from cogo.streams.envelope import (
    CALL_KEY,
    MSG_ID,
    RESERVED_PAYLOAD_KEYS,
    ResolvedAssignment,
    Usage,
    Waiting,
    WorkOrder,
    WorkResult,
    decode_order,
    encoder,
    result_subject,
)
from cogo.streams.events import iso, order_event
from cogo.streams.outputs import Output, encode_output, output_subject
from cogo.streams.seal import MAC_HEADER, guard_id, output_mac
from cogo.streams.topology import SUSPENSION_BUCKET

log = logging.getLogger(__name__)


class Outcome(msgspec.Struct, frozen=True):
    """What a successful attempt produced (class-based workers return one)."""

    result: Any = None
    usage: Usage = Usage()


class TaskContext:
    """What a handler may use while it runs one attempt of a task.

    async def handle(ctx: cogo.TaskContext, doc: Doc) -> dict:
        reply = await ctx.llm.chat([{"role": "user", "content": doc.text}])
        await ctx.emit(reply.content)
        return await ctx.step("save", save, reply.content)
    """

    def __init__(self, worker: Worker, delivery: Delivery, order: WorkOrder) -> None:
        self.worker = worker
        self.delivery = delivery
        self.order = order
        self._tokens = 0
        self._cost_usd = 0.0
        self.journal = Journal(self)
        self._llm: LlmSession | None = None
        self._emitted = 0
        self._emitting = asyncio.Lock()
        self._durable: Durable | None = None  # made by the first call, sleep or signal
        self._seq = 0  # durable requests (steps included) of this run, in order
        self.cancel_requested = False
        self.task: asyncio.Task[Any] | None = None  # the one running the handler

    @property
    def llm(self) -> LlmSession:
        """The task's metered LLM client: ``await ctx.llm.chat(messages, ...)``."""
        if self._llm is None:
            self._llm = LlmSession(self, self.worker.llm_client)
        return self._llm

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per task: its JSON result is journaled, and a
        retried attempt or a redelivery gets it back without running ``fn`` again.

        result = await ctx.step("fetch", fetch_page, url)
        """
        return await run_step(self, name, fn, args, kwargs, seq=self.next_seq())

    def next_seq(self) -> int:
        """The number of this run's next durable request (a replay must ask the same)."""
        self._seq += 1
        return self._seq

    @property
    def durable(self) -> Durable:
        """This run's calls, sleeps and signals (``cogo.sdk.durable``)."""
        if self._durable is None:
            self._durable = Durable(self)
        return self._durable

    async def call(
        self, route: str, payload: Any = None, *, key: str | None = None,
        assignment: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        """Run a child task on ``route`` and return its result (``cogo.TaskFailed`` if it
        failed). The child's id is ``<task_id>/<key>`` (``key`` defaults to the call's order
        in the handler); a replay never starts it twice. Its budget is carved from what this
        task has left. Calls may run in parallel (``asyncio.gather``).

        notes = await asyncio.gather(*(ctx.call("research.read.0", {"topic": t}, key=t)
                                       for t in topics))
        """
        return await durable.call(self, route, payload, key, assignment)

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: a long sleep gives back the worker and survives restarts.

        await ctx.sleep(3600)
        """
        await durable.sleep(self, seconds)

    async def wait_signal(self, name: str, *, timeout_s: float | None = None) -> Any:
        """The data of signal ``name`` sent to this task (``Client.signal``, ``POST
        /api/tasks/{id}/signals/{name}``, ``cogo signal``); one sent earlier is kept, the
        first one counts. ``cogo.SignalTimeout`` after ``timeout_s``.

        ok = await ctx.wait_signal("approve", timeout_s=86_400)
        """
        return await durable.wait_signal(self, name, timeout_s)

    async def emit(self, chunk: Any) -> None:
        """Append ``chunk`` (any JSON value) to the task's output, ``outputs.<task_id>``;
        returns once the stream stored it."""
        cap = self.worker.config.runtime.max_chunk_bytes
        async with self._emitting:  # one at a time: sequence numbers follow stream order
            output = Output(
                task_id=self.task_id, attempt=self.attempt, at=iso(), seq=self._emitted + 1,
                delivery=self.delivery.delivered, data=chunk,
            )  # fmt: skip
            try:
                data = encode_output(output)
            except (TypeError, ValueError, OverflowError) as exc:
                raise OutputInvalid(
                    f"ctx.emit takes JSON data; a {type(chunk).__name__} is not: {exc}"
                ) from None
            if len(data) > cap:
                raise OutputInvalid(
                    f"the chunk is {len(data):,} bytes encoded, over the {cap:,} an output chunk "
                    "may have: emit smaller pieces, or store it as an artifact"
                )
            # readers show a chunk only with the task's output MAC (cogo.streams.seal)
            token = self.order.out_token
            headers = {MAC_HEADER: output_mac(token, data)} if token else None
            await self.worker.publish_all([(output_subject(self.task_id), data, headers)])
            self._emitted += 1

    @property
    def emitted(self) -> int:
        """Chunks this attempt appended to the task's output."""
        return self._emitted

    @property
    def task_id(self) -> str:
        return self.order.task_id

    @property
    def route(self) -> str:
        return self.order.route

    @property
    def attempt(self) -> int:
        """1 for the first attempt, 2 for the first retry, ..."""
        return self.order.attempt

    @property
    def assignment(self) -> ResolvedAssignment:
        """The task's policy envelope with every key decided (model, budgets, limits)."""
        return self.order.assignment

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as submitted, without ``__assignment`` and the other reserved keys."""
        raw = self.order.payload
        if not any(key in raw for key in RESERVED_PAYLOAD_KEYS):
            return raw
        return {k: v for k, v in raw.items() if k not in RESERVED_PAYLOAD_KEYS}

    @property
    def correlation_id(self) -> str:
        return self.order.correlation_id

    @property
    def version(self) -> str | None:
        return self.worker.version

    @property
    def js(self) -> Any:
        return self.worker.js

    @property
    def usage(self) -> Usage:
        """What this attempt reported so far."""
        return Usage(tokens=self._tokens, cost_usd=round(self._cost_usd, 9))

    @property
    def remaining_tokens(self) -> int:
        """Tokens the task may still spend under its ``max_tokens``, this attempt included
        (and what its children spent or hold: the budget bounds the task's tree)."""
        held = self._durable.held_tokens if self._durable is not None else 0
        spent = self.order.usage_so_far.tokens + self._tokens + held
        return max(0, self.order.assignment.max_tokens - spent)

    @property
    def remaining_cost_usd(self) -> float:
        held = self._durable.held_cost_usd if self._durable is not None else 0.0
        spent = self.order.usage_so_far.cost_usd + self._cost_usd + held
        return max(0.0, self.order.assignment.max_cost_usd - spent)

    @property
    def deadline(self) -> float:
        """Unix seconds by which this attempt must be done (timeout or TTL, sooner)."""
        timeout_at = self.delivery.claimed_at + self.order.assignment.timeout_ms / 1000.0
        return min(timeout_at, self.order.deadline)

    def report_usage(self, *, tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Add to this attempt's usage; it is summed across attempts and enforced.

        Raises ``TokenBudgetExhausted`` / ``CostBudgetExhausted`` (no retry) once the task as
        a whole has spent more than its assignment allows: the budget holds mid-attempt.
        """
        if tokens < 0 or cost_usd < 0:
            raise ValueError("usage cannot be negative")
        self._tokens += int(tokens)
        self._cost_usd += float(cost_usd)
        charge_step(int(tokens), float(cost_usd))  # a step journals what it spent
        a = self.order.assignment
        spent = self.order.usage_so_far + self.usage
        if self._durable is not None:
            spent = Usage(tokens=spent.tokens + self._durable.held_tokens,
                          cost_usd=spent.cost_usd + self._durable.held_cost_usd)  # fmt: skip
        if spent.tokens > a.max_tokens:
            raise TokenBudgetExhausted(
                f"used {spent.tokens} tokens across {self.attempt} attempt(s), "
                f"budget max_tokens={a.max_tokens}"
            )
        if spent.cost_usd > a.max_cost_usd:
            raise CostBudgetExhausted(
                f"spent ${spent.cost_usd:.4f} across {self.attempt} attempt(s), "
                f"budget max_cost_usd={a.max_cost_usd}"
            )


class Worker(Actor):
    """Base of actors that run task attempts (echo, codegen, your class-based agents, ...)."""

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
            if ctx.task is not None and not ctx.cancel_requested:
                ctx.cancel_requested = True
                ctx.task.cancel()

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        raise NotImplementedError

    async def handle(self, delivery: Delivery) -> None:
        order = decode_order(delivery.data)  # MalformedMessage -> dead letter
        started = time.time()
        outcome: Outcome | None = None
        error: CogoError | None = None
        suspended: list[Waiting] | None = None
        ctx = TaskContext(self, delivery, order)
        ctx.task = asyncio.current_task()
        running = self._running.setdefault(order.task_id, [])
        running.append(ctx)
        announce = None
        if self._started_after_s >= 0:
            announce = asyncio.get_running_loop().call_later(
                self._started_after_s, self._announce, order, delivery
            )
        try:
            if started > order.deadline:
                raise TtlExpired(
                    f"task expired {started - order.deadline:.3f}s before a worker claimed it"
                )
            if CALL_KEY in order.payload and await self._cancelled(order.task_id):
                # a child whose parent's cancel reached it in the queue: it never runs
                ctx.cancel_requested = True
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
            suspended = list(ctx.durable.waiting.values())
        except asyncio.CancelledError:
            if not ctx.cancel_requested:
                raise  # the worker is stopping: the message is redelivered
            if ctx.task is not None:
                ctx.task.uncancel()
            error = TaskCancelled("the task was cancelled while its handler ran")
        except CogoError as exc:
            error = exc
        except BaseExceptionGroup as group:  # a TaskGroup of the handler's
            if group.subgroup(Suspend) is not None:
                suspended = list(ctx.durable.waiting.values())
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
        if ctx.cancel_requested and error is None:
            # it returned before its next await: the cancel still wins
            outcome, suspended = None, None
            error = TaskCancelled("the task was cancelled while its handler ran")
        duration_ms = (time.time() - started) * 1000.0
        # what the attempt spent: reported through ctx, by a class-based worker's Outcome, or
        # carried by the exception of a failed attempt (it still spent tokens)
        usage = ctx.usage + (
            outcome.usage if outcome is not None else getattr(error, "usage", None) or Usage()
        )
        usage = Usage(tokens=usage.tokens, cost_usd=usage.cost_usd, duration_ms=duration_ms)
        emitted = ctx.emitted > 0
        report = self._report(order, delivery, outcome, error, usage, duration_ms, emitted)
        if ctx._durable is not None and ctx._durable.used:
            report = msgspec.structs.replace(
                report, durable=True, suspended=suspended,
                cancelled=ctx.cancel_requested, children=ctx.durable.pending_children or None,
                tree_usage=ctx.durable.tree_usage,
            )  # fmt: skip
        elif ctx.cancel_requested:
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
            event_id=f"{order.task_id}:started:{order.attempt}"
            + (f":{order.resumes}" if order.resumes else ""),
            actor=self.name,
            queue_wait_ms=round(delivery.queue_wait_ms, 3),
            version=self.version or order.version,
            data=ExecuteStarted(claimed_at=iso(delivery.claimed_at), delivery=delivery.delivered),
        )
        task = asyncio.ensure_future(
            self.events.append(event, msg_id=guard_id(order.token, event.event_id))
        )
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
    parent = delivery.headers.get(tracing.TRACEPARENT) or tracing.task_traceparent(
        order.task_id, order.traceparent
    )
    return tracing.span(
        f"attempt {order.route}", parent=parent, kind="consumer",
        attributes={"cogo.task_id": order.task_id, "cogo.route": order.route,
                    "cogo.attempt": order.attempt, "cogo.delivery": delivery.delivered},
    )  # fmt: skip
