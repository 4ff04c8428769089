"""Durable agents in code, the worker's side: ``ctx.call``, ``ctx.sleep``, ``ctx.wait_signal``.

A handler that awaits something its journal does not hold yet (a child's result, a timer
not yet due, a signal not yet sent) waits for it in its process for ``[runtime]
suspend_after_ms``; a quick answer costs nothing more. Past that the run *suspends*: the
handler is unwound by ``Suspend`` (a ``BaseException``, so ``except Exception`` in user code
does not swallow it), the worker reports what the task waits for to the dispatcher
(``cogo.runtime.suspension``), acks the message and forgets the task. When what it waits for
arrives, the dispatcher delivers the same attempt again and the handler runs from the top:
steps, calls, sleeps and signals that finished return their journaled values at once.

Every durable request takes the next number of its run (``seq``); the journal records it,
and a replay that asks for something else at a number is ``task.nondeterministic``.

Journal entries beyond steps (``cogo.sdk.steps``):

- ``call_started`` (``<task>:call:<key>``): the child ``<task>/<key>`` was submitted, with the
  budget carved for it. A replay finds it and submits nothing; a crash between the
  submission and the entry re-submits with the same ``Nats-Msg-Id`` (the child id), which
  the stream drops as a duplicate.
- ``call_completed``: the child's outcome, written by the dispatcher from its terminal event.
- ``task_signaled``: a signal, written by the dispatcher; the first of a name counts.
- ``~sleep:<n>`` and ``~signal:<name>`` steps journal a timer's due time and a wait's
  deadline, ``~signal:<name>:got`` how the wait ended (data or timeout): first wins, so a
  signal that arrives after a journaled timeout cannot change a replay.

Budget: a child's ``max_tokens`` / ``max_cost_usd`` are carved from what the parent has left
(its budget minus its own usage, minus what its ended children's trees spent, minus what
running children hold): an explicit ``assignment`` budget as asked (capped by that), else the
child route's default capped by half of it, so that parallel siblings are not starved. The parent's own spending counts against the same remainder
(``TaskContext.report_usage``), so a root's budget bounds its whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import msgspec

from cogo import tracing
from cogo.errors import (
    CallDepthExceeded,
    CostBudgetExhausted,
    SleepPastTtl,
    StepNameInvalid,
    StepNameReused,
    TaskFailed,
    TaskSignalTimeout,
    TokenBudgetExhausted,
    TtlExpired,
)
from cogo.sdk.steps import durable_subject, run_step
from cogo.streams.catalogue import (
    CALL_STARTED,
    CallCompleted,
    CallStarted,
)
from cogo.streams.envelope import (
    ASSIGNMENT_KEY,
    CALL_KEY,
    EXECUTE_SUBJECT,
    MSG_ID,
    Usage,
    Waiting,
    encoder,
)
from cogo.streams.events import encode_event, order_event
from cogo.streams.policies import read_policy
from cogo.streams.seal import guard_id

if TYPE_CHECKING:
    from cogo.sdk.context import TaskContext

MAX_KEY_CHARS = 100


class Suspend(BaseException):  # noqa: N818 - control flow, not an error
    """Unwinds a handler that waits for something its journal does not hold yet."""


def _check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable() or " " in key:
        raise StepNameInvalid(f"call key {key!r}: give 1-{MAX_KEY_CHARS} printable characters without spaces")
    return key


class Durable:
    """The durable requests of one run of a handler: their numbers, what they wait for."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.calls = 0
        self.sleeps = 0
        self.used = False
        self.waiting: dict[str, Waiting] = {}  # what this run waits for, by key
        self._starting = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._keys: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()  # tasks of the handler that wait
        self.requested: set[str] = set()  # children this run asked for
        self.starting = asyncio.Lock()
        # budget of the tree: what ended children's trees spent, what running ones hold
        self.children_tokens = 0
        self.children_cost_usd = 0.0
        self.reserved: dict[str, tuple[int, float]] = {}

    # -- budget --------------------------------------------------------------------------

    @property
    def held_tokens(self) -> int:
        """Tokens the task's tree spent or holds beyond its own usage."""
        return self.children_tokens + sum(t for t, _ in self.reserved.values())

    @property
    def held_cost_usd(self) -> float:
        return self.children_cost_usd + sum(c for _, c in self.reserved.values())

    def _ended(self, child_id: str, done: CallCompleted) -> None:
        if child_id in self._keys:
            return
        self._keys.add(child_id)
        self.reserved.pop(child_id, None)
        self.children_tokens += done.tree_tokens
        self.children_cost_usd += done.tree_cost_usd

    @property
    def tree_usage(self) -> Usage:
        return Usage(tokens=self.children_tokens, cost_usd=round(self.children_cost_usd, 9))

    @property
    def pending_children(self) -> list[str]:
        return sorted(self.reserved)

    # -- waiting -------------------------------------------------------------------------

    def _begin(self) -> None:
        self.used = True
        self._starting += 1
        self._idle.clear()

    def _end(self) -> None:
        self._starting -= 1
        if self._starting == 0:
            self._idle.set()

    def _future(self, key: str) -> asyncio.Future[Any]:
        fut = self._futures.get(key)
        if fut is None:
            fut = self._futures[key] = self.ctx._runtime.waiters.register(self.ctx.task_id, key)
        return fut

    def _drop(self, key: str) -> None:
        self.waiting.pop(key, None)
        fut = self._futures.pop(key, None)
        if fut is not None:
            self.ctx._runtime.waiters.discard(self.ctx.task_id, key, fut)

    async def _wait(self, key: str, waiting: Waiting, within: float) -> Any:
        """What arrives for ``key`` within ``within`` seconds, else suspend the run."""
        self.waiting[key] = waiting
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._end()  # this request is started: a suspension need not wait for it
        try:
            fut = self._future(key)
            if within > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        value = await asyncio.shield(fut)
                        self._drop(key)
                        return value
            # parallel requests of this run are submitted before it suspends, so every child
            # it waits for exists and a resume finds their entries
            await self._idle.wait()
            raise Suspend()
        finally:
            self._starting += 1  # balanced by the caller's _end
            self._idle.clear()

    def release(self) -> None:
        """The run is over: stop listening for what it waited for."""
        for key in list(self._futures):
            self._drop(key)
        # the other branches of a gather() that suspended: nobody awaits them any more
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and not task.done():
                task.cancel()
        self._tasks.clear()

    @property
    def suspend_after_s(self) -> float:
        return self.ctx._runtime.config.runtime.suspend_after_ms / 1000.0


async def call(ctx: TaskContext, route: str, payload: Any, key: str | None, assignment: dict[str, Any] | None) -> Any:
    """``ctx.call``: the result of child ``<task_id>/<key>`` (see the module docstring)."""
    d = ctx._calls
    seq = ctx._next_seq()
    d.calls += 1
    key = _check_key(str(key) if key is not None else str(d.calls))
    child_id = f"{ctx.task_id}/{key}"
    wait_key = f"call:{child_id}"
    if child_id in d.requested:
        raise StepNameReused(f"ctx.call key {key!r} was already used in this run: give each call its own key")
    d.requested.add(child_id)
    d._begin()
    try:
        await ctx._runtime.waiters.start(ctx.route)
        journal = ctx._journal
        fut = d._future(wait_key)  # before anything is submitted: a quick child is heard
        # one call at a time from here, in the order the handler made them (the lock is
        # FIFO, and taking a free one does not yield): parallel calls carve their budgets
        # in that order on every run
        async with d.starting:
            await journal.load()
            journal.check(seq, f"call {key!r}")
            done = journal.completed.get(child_id)
            if done is None and fut.done():
                done = msgspec.convert(fut.result(), CallCompleted)
            if done is not None:
                d._drop(wait_key)
                return _outcome(d, child_id, done)
            started = journal.started.get(child_id)
            if started is None:
                started = await _start_child(ctx, seq, key, child_id, route, payload, assignment)
            d.reserved.setdefault(child_id, (started.max_tokens, started.max_cost_usd))
        raw = await d._wait(wait_key, Waiting(kind="call", name=child_id), d.suspend_after_s)
        return _outcome(d, child_id, msgspec.convert(raw, CallCompleted))
    finally:
        d._end()


def _outcome(d: Durable, child_id: str, done: CallCompleted) -> Any:
    d._ended(child_id, done)
    if done.ok:
        return done.result
    raise TaskFailed(
        done.error_code or "task.failed",
        done.error or "the child task failed",
        done.attempts,
        task_id=child_id,
    )


async def _start_child(
    ctx: TaskContext,
    seq: int,
    key: str,
    child_id: str,
    route: str,
    payload: Any,
    assignment: dict[str, Any] | None,
) -> CallStarted:
    worker = ctx._runtime
    parent_call = ctx.order.payload.get(CALL_KEY)
    depth = (parent_call.get("depth", 0) if isinstance(parent_call, dict) else 0) + 1
    limit = worker.config.runtime.max_call_depth
    if depth > limit:
        raise CallDepthExceeded(
            f"ctx.call({route!r}) would start a task at depth {depth}, past "
            f"[runtime] max_call_depth={limit} (an agent calling itself without end?)"
        )
    policy = await read_policy(worker.js, route)  # UnknownRoute: nothing is started
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(mode="json")
    body = msgspec.to_builtins(payload) if payload is not None else {}
    if not isinstance(body, dict):
        raise TypeError(f"ctx.call takes a payload that is a JSON object, not {type(body)}")
    wanted = dict(assignment or {})
    d = ctx._calls
    # carved and reserved with no await in between: parallel calls never carve the same.
    # An explicit budget is carved as asked (capped by what is left); without one, the
    # child's route default, capped by half of what is left, so siblings are not starved
    if wanted.get("max_tokens"):
        tokens = min(int(wanted["max_tokens"]), ctx.remaining_tokens)
    else:
        tokens = min(policy.max_tokens, ctx.remaining_tokens // 2)
    if wanted.get("max_cost_usd") is not None:
        cost = min(float(wanted["max_cost_usd"]), ctx.remaining_cost_usd)
    else:
        cost = min(policy.max_cost_usd, ctx.remaining_cost_usd / 2)
    if tokens <= 0:
        raise TokenBudgetExhausted(f"ctx.call({route!r}): the task's tree has no tokens left to carve for a child")
    if cost <= 0 and policy.max_cost_usd > 0:
        raise CostBudgetExhausted(f"ctx.call({route!r}): the task's tree has no cost budget left for a child")
    ttl_ms = int((ctx.order.deadline - time.time()) * 1000)
    if ttl_ms <= 0:
        raise TtlExpired(f"ctx.call({route!r}): the task reached its ttl_ms")
    wanted.update(
        max_tokens=tokens, max_cost_usd=round(cost, 9), ttl_ms=min(int(wanted.get("ttl_ms") or ttl_ms), ttl_ms)
    )
    body[ASSIGNMENT_KEY] = wanted
    # the parent's route: where the dispatcher journals the child's end for its parent
    body[CALL_KEY] = {"parent": ctx.task_id, "depth": depth, "route": ctx.route}
    message = {
        "task_id": child_id,
        "route": route,
        "payload": body,
        "correlation_id": ctx.correlation_id,
        "causation_id": ctx.task_id,
    }
    entry = CallStarted(
        child_id=child_id, key=key, child_route=route, seq=seq, max_tokens=tokens, max_cost_usd=round(cost, 9)
    )
    event = order_event(
        CALL_STARTED,
        ctx.order,
        event_id=f"{ctx.task_id}:call:{key}",
        actor=worker.name,
        data=entry,
    )
    d.reserved[child_id] = (tokens, round(cost, 9))
    try:
        # the child first: an entry without its child would leave the parent waiting forever.
        # Traced, the submission is a span under the attempt, so the child joins its trace
        headers = tracing.submitted({MSG_ID: child_id}, task_id=child_id, route=route, name="call")
        await worker.publish_all([(EXECUTE_SUBJECT, encoder.encode(message), headers)])
        await worker.publish_all(
            # the task's own route's subject (the only one its app may append to), under
            # an id guarded by its token: nobody else can take it first
            [
                (
                    durable_subject(CALL_STARTED, ctx.route, ctx.task_id),
                    encode_event(event),
                    {MSG_ID: guard_id(ctx.order.token, event.event_id)},
                )
            ]
        )
    except BaseException:
        d.reserved.pop(child_id, None)
        raise
    return entry


async def sleep(ctx: TaskContext, seconds: float) -> None:
    """``ctx.sleep``: a durable timer (its due time journaled as step ``~sleep:<n>``)."""
    d = ctx._calls
    seq = ctx._next_seq()
    d.sleeps += 1
    name = f"~sleep:{d.sleeps}"
    seconds = float(seconds)
    if seconds < 0:
        raise ValueError("ctx.sleep takes seconds >= 0")
    d._begin()
    try:

        def due_at() -> float:
            due = time.time() + seconds
            if due > ctx.order.deadline:
                raise SleepPastTtl(
                    f"ctx.sleep({seconds:g}) would end {due - ctx.order.deadline:.1f}s after "
                    f"the task's ttl_ms={ctx.assignment.ttl_ms}: raise ttl_ms or sleep less"
                )
            return due

        await ctx._journal.load()
        due = float(await run_step(ctx, name, _now_fn(due_at), (), {}, seq=seq))
        left = due - time.time()
        if left <= 0:
            return
        if left <= d.suspend_after_s:
            await asyncio.sleep(left)
            return
        await d._wait(f"timer:{name}", Waiting(kind="timer", name=name, until=due), 0)
    finally:
        d._end()


def _now_fn(fn: Any) -> Any:
    async def run() -> Any:  # async: a step body that is a plain function runs in a thread
        return fn()

    return run


async def wait_signal(ctx: TaskContext, name: str, timeout_s: float | None) -> Any:
    """``ctx.wait_signal``: the data of the first signal ``name`` sent to the task."""
    d = ctx._calls
    seq = ctx._next_seq()
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise StepNameInvalid(f"signal name {name!r}: give 1-100 printable characters")
    d._begin()
    try:

        def deadline() -> float | None:
            if timeout_s is None:
                return None
            until = time.time() + float(timeout_s)
            if until > ctx.order.deadline:
                raise SleepPastTtl(
                    f"ctx.wait_signal({name!r}, timeout_s={timeout_s:g}) would time out after "
                    f"the task's ttl_ms={ctx.assignment.ttl_ms}: raise ttl_ms or wait less"
                )
            return until

        key = f"signal:{name}"
        await ctx._runtime.waiters.start(ctx.route)
        fut = d._future(key)
        journal = ctx._journal
        await journal.load()
        until = await run_step(ctx, f"~signal:{name}", _now_fn(deadline), (), {}, seq=seq)
        got = await journal.get(f"~signal:{name}:got")
        if got is None:
            if name in journal.signals:
                outcome = {"data": journal.signals[name]}
            elif fut.done():
                outcome = {"data": fut.result().get("data")}
            elif until is not None and time.time() >= until:
                outcome = {"timeout": True}
            else:
                within = d.suspend_after_s
                if until is not None:
                    within = min(within, max(0.0, until - time.time()))
                try:
                    raw = await d._wait(key, Waiting(kind="signal", name=name, until=until), within)
                    outcome = {"data": raw.get("data")}
                except Suspend:
                    if until is None or time.time() < until:
                        raise
                    outcome = {"timeout": True}
            d._drop(key)
            result = await run_step(ctx, f"~signal:{name}:got", _now_fn(lambda: outcome), (), {})
        else:
            d._drop(key)
            result = got.result
        if result.get("timeout"):
            raise TaskSignalTimeout(f"signal {name!r} did not arrive within {timeout_s}s")
        return result.get("data")
    finally:
        d._end()
