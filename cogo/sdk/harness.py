"""A bus-free harness for unit tests of one agent handler, as Temporal's
``ActivityEnvironment`` is for one activity.

No nats-server, no DuckDB, no processes: the handler runs in the test's event loop with a
context that keeps what it does in memory. Validation of the payload and the conversion of
the result are the worker's own (``cogo.sdk.agent``), so a payload that would end a real
task with ``payload.invalid`` raises ``cogo.errors.InvalidPayload`` here too.

    from cogo.sdk.harness import AgentEnvironment

    async def test_count():
        env = AgentEnvironment()
        assert await env.run(count, {"text": "a b a"}) == {"words": 3, "distinct": 2}
        assert env.tokens == 3

    async def test_summarise():
        env = AgentEnvironment(llm=["Short."])            # scripted replies, in order
        assert (await env.run(summarise, Text("Long text.")))["summary"] == "Short."
        assert env.llm_requests[0]["messages"][-1]["content"] == "Long text."

``llm`` is a list of scripted replies (a string, a ``cogo.LlmReply`` or its dict form) or
the URL of an OpenAI-compatible endpoint (``chat_server.url``); ``steps`` pre-journals step
results (as a retried attempt sees them); ``calls`` answers ``ctx.call(route, ...)`` (a
value, or a function of the payload), ``signals`` answers ``ctx.wait_signal(name)``. What the
handler did is in ``emitted``, ``steps``, ``step_runs``, ``called``, ``slept`` and
``tokens`` / ``cost_usd``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cogo.config import RoutePolicy
from cogo.errors import (
    CogoError,
    LlmNotConfigured,
    ModelNotAllowed,
    OutputInvalid,
    StepNameReused,
    StepResultInvalid,
)
from cogo.sdk.agent import payload_decoder, to_result
from cogo.sdk.llm import LlmReply, LlmUsage, ToolCall
from cogo.streams.budget import over_budget
from cogo.streams.envelope import ResolvedAssignment, Usage

Handler = Callable[..., Any]


class AgentEnvironment:
    """Runs one handler (an ``@app.agent`` function) with a fake ``TaskContext``."""

    def __init__(
        self,
        *,
        route: str = "test.agent.0",
        task_id: str | None = None,
        attempt: int = 1,
        policy: RoutePolicy | dict[str, Any] | None = None,
        llm: Sequence[str | LlmReply | dict[str, Any]] | str | None = None,
        steps: dict[str, Any] | None = None,
        calls: dict[str, Any] | None = None,
        signals: dict[str, Any] | None = None,
    ) -> None:
        self.route = route
        self.task_id = task_id or uuid.uuid4().hex
        self.attempt = attempt
        if isinstance(policy, dict):
            policy = msgspec.convert(policy, RoutePolicy)
        self.policy = policy or RoutePolicy()
        self.llm_url = llm if isinstance(llm, str) else None
        self.llm_script: list[Any] = [] if isinstance(llm, str) or llm is None else list(llm)
        self.llm_requests: list[dict[str, Any]] = []
        self.steps: dict[str, Any] = dict(steps or {})  # the journal: name -> JSON result
        self.step_runs: list[str] = []  # steps whose function ran (not replayed)
        self.calls = dict(calls or {})
        self.called: list[tuple[str, Any]] = []
        self.signals = dict(signals or {})
        self.slept: list[float] = []
        self.emitted: list[Any] = []
        self.tokens = 0
        self.cost_usd = 0.0

    async def run(self, handler: Handler, payload: Any = None) -> Any:
        """Call ``handler(ctx, payload)`` and return its result as JSON data (what
        ``execute_done`` would carry). A dict payload is validated against the handler's
        annotation first, as the worker does; a typed one is passed as it is."""
        if payload is None or isinstance(payload, dict):
            payload = payload_decoder(handler)(dict(payload or {}))
        ctx = FakeContext(self, payload)
        return to_result(await handler(ctx, payload))


class FakeContext:
    """What a handler sees in ``AgentEnvironment``: ``cogo.TaskContext``'s surface."""

    def __init__(self, env: AgentEnvironment, payload: Any) -> None:
        self._env = env
        self._payload = payload
        self._steps_this_attempt: set[str] = set()
        self.llm = FakeLlm(env, self)
        p = env.policy
        self.assignment = ResolvedAssignment(
            model=p.model,
            max_tokens=p.max_tokens,
            max_cost_usd=p.max_cost_usd,
            timeout_ms=p.timeout_ms,
            ttl_ms=p.ttl_ms,
            max_attempts=p.max_attempts,
            backoff=p.backoff,
            allowed_models=tuple(p.ceilings.allowed_models),
        )
        self.deadline = time.time() + p.timeout_ms / 1000.0
        self.correlation_id = env.task_id
        self.version: str | None = None

    @property
    def task_id(self) -> str:
        return self._env.task_id

    @property
    def route(self) -> str:
        return self._env.route

    @property
    def attempt(self) -> int:
        return self._env.attempt

    @property
    def payload(self) -> dict[str, Any]:
        data = to_result(self._payload)
        return data if isinstance(data, dict) else {}

    @property
    def usage(self) -> Usage:
        return Usage(tokens=self._env.tokens, cost_usd=self._env.cost_usd)

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.assignment.max_tokens - self._env.tokens)

    @property
    def remaining_cost_usd(self) -> float:
        return max(0.0, self.assignment.max_cost_usd - self._env.cost_usd)

    def report_usage(self, *, tokens: int = 0, cost_usd: float = 0.0) -> None:
        if tokens < 0 or cost_usd < 0:
            raise ValueError("usage cannot be negative")
        self._env.tokens += int(tokens)
        self._env.cost_usd += float(cost_usd)
        spent = Usage(tokens=self._env.tokens, cost_usd=self._env.cost_usd)
        error = over_budget(spent, self.assignment)
        if error is not None:
            raise error

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Journaled once: a name already in ``env.steps`` replays without running ``fn``."""
        if name in self._steps_this_attempt:
            raise StepNameReused(f"step {name!r} already ran in this attempt")
        self._steps_this_attempt.add(name)
        if name in self._env.steps:
            return self._env.steps[name]
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **kwargs)
        else:
            value = await asyncio.to_thread(fn, *args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        try:
            data = to_result(value)
            msgspec.json.encode(data)
        except (CogoError, TypeError) as exc:
            raise StepResultInvalid(f"step {name!r}: {exc}") from None
        self._env.steps[name] = data
        self._env.step_runs.append(name)
        return data

    async def emit(self, chunk: Any) -> None:
        try:
            self._env.emitted.append(msgspec.json.decode(msgspec.json.encode(chunk)))
        except TypeError as exc:
            raise OutputInvalid(f"ctx.emit takes JSON data: {exc}") from None

    async def call(self, route: str, payload: Any = None, *, key: str | None = None, **_: Any) -> Any:
        """``env.calls[route]``: a value, or a function (sync or async) of the payload."""
        self._env.called.append((route, to_result(payload)))
        if route not in self._env.calls:
            raise KeyError(f"ctx.call({route!r}): give AgentEnvironment(calls={{{route!r}: ...}})")
        answer = self._env.calls[route]
        if callable(answer):
            answer = answer(payload)
            if inspect.isawaitable(answer):
                answer = await answer
        return answer

    async def sleep(self, seconds: float) -> None:
        """A durable timer: recorded in ``env.slept``, returns at once."""
        self._env.slept.append(float(seconds))

    async def wait_signal(self, name: str, timeout_s: float | None = None) -> Any:
        """``env.signals[name]``; TimeoutError (as a signal that never came) without it."""
        if name not in self._env.signals:
            raise TimeoutError(f"signal {name!r} did not arrive (AgentEnvironment(signals=...))")
        return self._env.signals[name]


class FakeLlm:
    """``ctx.llm``: scripted replies, or a real call to ``llm_url`` (no retries)."""

    def __init__(self, env: AgentEnvironment, ctx: FakeContext) -> None:
        self._env = env
        self._ctx = ctx

    async def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        tools: Sequence[Any] | None = None,
        stream: bool = False,
        **extra: Any,
    ) -> LlmReply:
        model = model or self._ctx.assignment.model
        allowed = self._ctx.assignment.allowed_models
        if allowed and model not in allowed:  # as the real ctx.llm: refused before sending
            raise ModelNotAllowed(f"model {model!r} is not in the route's allowed_models {list(allowed)}")
        request = {
            "model": model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "tools": list(tools) if tools else None,
            **extra,
        }
        self._env.llm_requests.append(request)
        if self._env.llm_url:
            reply = await _request(self._env.llm_url, request)
        elif self._env.llm_script:
            reply = _as_reply(self._env.llm_script.pop(0), model)
        else:
            raise LlmNotConfigured(
                "ctx.llm.chat was called but AgentEnvironment has no reply for it: pass "
                "llm=[...] (scripted replies) or llm=chat_server.url"
            )
        self._ctx.report_usage(tokens=reply.usage.total_tokens, cost_usd=reply.usage.cost_usd)
        if stream and reply.content:
            await self._ctx.emit(reply.content)
        return reply


def _as_reply(value: str | LlmReply | dict[str, Any], model: str) -> LlmReply:
    if isinstance(value, LlmReply):
        return value
    if isinstance(value, str):
        words = len(value.split())
        return LlmReply(
            content=value,
            model=model,
            finish_reason="stop",
            usage=LlmUsage(completion_tokens=words, total_tokens=words),
        )
    return LlmReply.from_dict({"model": model, **value})


async def _request(url: str, request: dict[str, Any]) -> LlmReply:
    import httpx

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    body = {k: v for k, v in request.items() if v is not None}
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        response = await client.post(f"{base}/chat/completions", json=body)
    response.raise_for_status()
    doc = response.json()
    choice = (doc.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = doc.get("usage") or {}
    calls = [
        ToolCall(id=c.get("id", ""), name=c["function"]["name"], arguments=c["function"].get("arguments") or "{}")
        for c in message.get("tool_calls") or []
    ]
    return LlmReply(
        content=message.get("content"),
        tool_calls=calls,
        model=doc.get("model") or request["model"],
        finish_reason=choice.get("finish_reason"),
        usage=LlmUsage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
        ),
    )
