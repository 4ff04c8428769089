"""The task context: what a handler may use while it runs one attempt of a task.

``TaskContext`` is the whole of a handler's world: the task (id, route, attempt, payload,
policy), its budget (``report_usage``, ``remaining_tokens``), ``ctx.llm``, ``ctx.step``,
``ctx.call`` / ``ctx.sleep`` / ``ctx.wait_signal``, ``ctx.emit``. The bus behind it (the
runtime's worker, the JetStream message) is held privately through ``AttemptRuntime``,
which the runtime's ``WorkerRunner`` satisfies: the SDK never imports the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cogo.config import Config
from cogo.errors import OutputInvalid
from cogo.sdk import durable
from cogo.sdk.durable import Durable
from cogo.sdk.llm import LlmSession
from cogo.sdk.steps import Journal, charge_step, run_step
from cogo.streams.artifacts import ArtifactStore
from cogo.streams.budget import over_budget
from cogo.streams.envelope import RESERVED_PAYLOAD_KEYS, ResolvedAssignment, Usage, WorkOrder
from cogo.streams.events import iso
from cogo.streams.outputs import Output, encode_output, output_subject
from cogo.streams.publisher import Outgoing, StreamAck
from cogo.streams.seal import MAC_HEADER, output_mac

if TYPE_CHECKING:
    from cogo.sdk.llm import LlmClient


class RunWaiters(Protocol):
    """The worker process's listeners a durable run waits on (``cogo.runtime.waiters``)."""

    async def start(self, route: str) -> None: ...

    def register(self, task_id: str, key: str) -> asyncio.Future[Any]: ...

    def discard(self, task_id: str, key: str, fut: asyncio.Future[Any]) -> None: ...


class AttemptRuntime(Protocol):
    """What a context needs of the worker running it (the runtime's ``WorkerRunner``)."""

    name: str
    version: str | None
    config: Config
    nc: NATS
    js: JetStreamContext
    artifacts: ArtifactStore
    llm_client: LlmClient

    @property
    def waiters(self) -> RunWaiters: ...

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[StreamAck]: ...


class AttemptDelivery(Protocol):
    """The message of this attempt: how many times it was delivered, when it was claimed."""

    @property
    def delivered(self) -> int: ...

    @property
    def claimed_at(self) -> float: ...


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

    def __init__(self, runtime: AttemptRuntime, delivery: AttemptDelivery, order: WorkOrder) -> None:
        # the bus behind this attempt: the runtime's, never a user's to touch
        self._runtime = runtime
        self._delivery = delivery
        self.order = order
        self._tokens = 0
        self._cost_usd = 0.0
        self._journal = Journal(self)
        self._llm: LlmSession | None = None
        self._emitted = 0
        self._emitting = asyncio.Lock()
        self._durable: Durable | None = None  # made by the first call, sleep or signal
        self._seq = 0  # durable requests (steps included) of this run, in order
        self._cancel_requested = False
        self._task: asyncio.Task[Any] | None = None  # the one running the handler

    @property
    def llm(self) -> LlmSession:
        """The task's metered LLM client: ``await ctx.llm.chat(messages, ...)``."""
        if self._llm is None:
            self._llm = LlmSession(self, self._runtime.llm_client)
        return self._llm

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per task: its JSON result is journaled, and a
        retried attempt or a redelivery gets it back without running ``fn`` again.

        result = await ctx.step("fetch", fetch_page, url)
        """
        return await run_step(self, name, fn, args, kwargs, seq=self._next_seq())

    def _next_seq(self) -> int:
        """The number of this run's next durable request (a replay must ask the same)."""
        self._seq += 1
        return self._seq

    @property
    def _calls(self) -> Durable:
        """This run's calls, sleeps and signals (``cogo.sdk.durable``)."""
        if self._durable is None:
            self._durable = Durable(self)
        return self._durable

    async def call(
        self,
        route: str,
        payload: Any = None,
        *,
        key: str | None = None,
        assignment: dict[str, Any] | None = None,
    ) -> Any:
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
        cap = self._runtime.config.runtime.max_chunk_bytes
        async with self._emitting:  # one at a time: sequence numbers follow stream order
            output = Output(
                task_id=self.task_id,
                attempt=self.attempt,
                at=iso(),
                seq=self._emitted + 1,
                delivery=self._delivery.delivered,
                data=chunk,
            )
            try:
                data = encode_output(output)
            except (TypeError, ValueError, OverflowError) as exc:
                raise OutputInvalid(f"ctx.emit takes JSON data; a {type(chunk).__name__} is not: {exc}") from None
            if len(data) > cap:
                raise OutputInvalid(
                    f"the chunk is {len(data):,} bytes encoded, over the {cap:,} an output chunk "
                    "may have: emit smaller pieces, or store it as an artifact"
                )
            # readers show a chunk only with the task's output MAC (cogo.streams.seal)
            token = self.order.out_token
            headers = {MAC_HEADER: output_mac(token, data)} if token else None
            await self._runtime.publish_all([(output_subject(self.task_id), data, headers)])
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
        return self._runtime.version

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
        timeout_at = self._delivery.claimed_at + self.order.assignment.timeout_ms / 1000.0
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
        spent = self.order.usage_so_far + self.usage
        if self._durable is not None:
            spent = Usage(
                tokens=spent.tokens + self._durable.held_tokens, cost_usd=spent.cost_usd + self._durable.held_cost_usd
            )
        error = over_budget(spent, self.order.assignment, f"across {self.attempt} attempt(s)")
        if error is not None:
            raise error
