"""``ctx.llm``: metered calls to an OpenAI-compatible chat endpoint (docs/design.md §11).

Every call is enforced against the task's assignment *before* anything is sent:

- the model must be one the route allows (``policy.model_not_allowed``, nothing sent);
- ``max_tokens`` is capped by what the task's token budget has left after the prompt, and
  by what its cost budget can pay at the model's ``[pricing]`` output rate; with fewer than
  ``[llm] min_completion_tokens`` left, no call is made (``budget.tokens_exceeded`` /
  ``budget.cost_exceeded``).

The prompt is estimated before the call, there being no tokenizer for every model behind an
OpenAI-compatible endpoint: characters / ``[llm] chars_per_token`` (OpenAI's rule of thumb
for English) over each message's text (content, tool-call arguments), plus 4 tokens per
message for its role and separators, plus the tool schemas' JSON. The reply's own ``usage``
is what gets charged; a reply without one is charged by the same estimate, and its
``llm_call`` event says ``usage_estimated: true``.

The reported usage is believed only within what was sent and received, so a lying
endpoint cannot fool the budget:

- at least the characters that came back / ``[llm] max_chars_per_token`` completion tokens:
  reporting 1 token for 100k characters charges 12.5k (the prompt was built by the agent
  and checked against the budget before it was sent);
- at most the ``max_tokens`` sent for the completion and one token per byte of the prompt
  (a byte-level tokenizer never does worse): reporting 50k tokens on a 2k budget charges
  what the call could have cost, no more;
- a reply longer than ``max_tokens`` allows (``max_tokens * max_chars_per_token``
  characters) is not read further: ``llm.bad_reply``, charged the cap.

Usage outside those bounds is clamped to them, and the call's ``llm_call`` event says, in
``usage_disputed``, what the endpoint claimed and why it was not believed.

After the call: one ``llm_call`` event (task, attempt, step, model, prompt/completion tokens,
cost, duration, finish reason), then the usage goes through ``ctx.report_usage`` (summed
across attempts, enforced by the dispatcher). ``stream=True`` emits each text delta to the
task's output (``ctx.emit``) as it arrives.

The client is the official ``openai`` SDK with its own retries off (``max_retries=0``,
``cogo.sdk.llm_protocol``, with the reply types and the sorting of errors): Cogo decides retries, inside the attempt's deadline. Retried here, with backoff (or the
endpoint's ``Retry-After``), only what is safe to send again: a 429 or 5xx answer, or a
connection that was never made. A timeout or a connection lost after the request went out
may have been billed: it ends the attempt with a retryable ``llm.error`` and the route's
policy decides about another attempt, as it does when the in-attempt retries run out or
the deadline is near. Other 4xx answers are ``llm.rejected`` (no retry); a reply without
choices, message or valid JSON is ``llm.bad_reply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cogo import tracing
from cogo.config import (
    ModelPrice,
    exponential_delay,
)
from cogo.errors import (
    CogoError,
    CostBudgetExhausted,
    LlmBadReply,
    LlmError,
    ModelNotAllowed,
    TokenBudgetExhausted,
)
from cogo.sdk.llm_protocol import (
    API_KEY_ENV,
    BASE_URL_ENV,
    Bounds,
    Failed,
    LlmClient,
    LlmReply,
    LlmUsage,
    Retryable,
    ToolCall,
    endpoint_url,
    has_media,
    prompt_chars,
    read_reply,
    request_kwargs,
    sorted_errors,
    tool_calls_of,
    usage_count,
    written_chars,
)
from cogo.streams.catalogue import LLM_CALL, LlmCall
from cogo.streams.envelope import Usage
from cogo.streams.events import event_message, order_event

if TYPE_CHECKING:
    from cogo.sdk.context import TaskContext

# re-exported: cogo.LlmReply and the others are imported from here
__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "LlmClient",
    "LlmReply",
    "LlmSession",
    "LlmUsage",
    "ToolCall",
    "endpoint_url",
]

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 4
MIN_CALL_S = 0.2  # less time than this left before the deadline: do not start a call
REPLY_ENVELOPE_BYTES = 64 * 1024  # a reply's JSON around its text: ids, usage, tool schemas


class LlmSession:
    """``ctx.llm``: the task's view of the endpoint, metered against its assignment."""

    def __init__(self, ctx: TaskContext, client: LlmClient) -> None:
        self._ctx = ctx
        self._client = client
        self._config = ctx._runtime.config
        self._calls = 0
        self._disputes: dict[int, str] = {}  # id(reply) -> why its usage was not believed

    def estimate_prompt(self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None = None) -> int:
        """Prompt tokens by the estimate the budget checks use (see the module docstring)."""
        per = self._config.llm.chars_per_token
        chars = prompt_chars(messages, tools)
        return math.ceil(chars / per) + MESSAGE_OVERHEAD_TOKENS * len(messages)

    def _bounds(self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None, cap: int) -> Bounds:
        sent = json.dumps([messages, list(tools or [])], ensure_ascii=False, default=str)
        ceiling = len(sent.encode()) + MESSAGE_OVERHEAD_TOKENS * (len(messages) + 1)
        if any(has_media(m.get("content")) for m in messages):
            ceiling = sys.maxsize  # an image's tokens are not bounded by its URL's bytes
        return Bounds(
            prompt_estimate=self.estimate_prompt(messages, tools),
            prompt_ceiling=ceiling,
            completion_cap=cap,
        )

    def _max_reply_chars(self, cap: int) -> int:
        """The most characters a reply of ``cap`` tokens can honestly hold."""
        return math.ceil(cap * self._config.llm.max_chars_per_token)

    async def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        stream: bool = False,
        **extra: Any,
    ) -> LlmReply:
        """One chat completion within the task's budget (see the module docstring)."""
        ctx = self._ctx
        sdk = self._client.sdk()  # LlmNotConfigured before anything else
        model = model or ctx.assignment.model
        allowed = ctx.assignment.allowed_models
        if allowed and model not in allowed:
            raise ModelNotAllowed(
                f"model {model!r} is not allowed on route {ctx.route} (allowed: {', '.join(allowed)}); nothing was sent"
            )
        messages = list(messages)
        prompt_estimate = self.estimate_prompt(messages, tools)
        price = self._config.pricing.get(model)
        cap = self._completion_cap(prompt_estimate, max_tokens, price)
        bounds = self._bounds(messages, tools, cap)
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": cap}
        if tools:
            body["tools"] = list(tools)
        if stream:
            body["stream_options"] = {"include_usage": True}
        body.update(extra)
        retries = self._config.llm.max_retries
        for retry in range(retries + 1):
            self._calls += 1
            started = time.time()
            left = ctx.deadline - started
            if left < MIN_CALL_S:
                raise LlmError(f"no time left in the attempt for an LLM call ({left:.2f}s)")
            try:
                # a little before the attempt's own deadline, so this error, not the
                # worker's timeout, says what happened
                async with asyncio.timeout(max(0.05, left - 0.05)):
                    if stream:
                        reply = await self._streamed(sdk, body, bounds, price)
                    else:
                        reply = await self._complete(sdk, body, bounds, price)
            except Retryable as exc:
                delay = self._delay(retry, exc.retry_after)
                await self._record(body, started, prompt_estimate, cap, None, exc.error, retry)
                if retry < retries and time.time() + delay + MIN_CALL_S < ctx.deadline:
                    log.info("%s: LLM call %s; retrying in %.2fs", ctx.task_id, exc.error, delay)
                    await asyncio.sleep(delay)
                    continue
                raise exc.error from None
            except Failed as exc:
                await self._record(body, started, prompt_estimate, cap, exc.reply, exc.error, retry)
                if exc.reply is not None:
                    ctx.report_usage(tokens=exc.reply.usage.total_tokens, cost_usd=exc.reply.usage.cost_usd)
                raise exc.error from None
            except TimeoutError:
                error = LlmError("the LLM call ran into the attempt's deadline")
                await self._record(body, started, prompt_estimate, cap, None, error, retry)
                raise error from None
            await self._record(body, started, prompt_estimate, cap, reply, None, retry)
            ctx.report_usage(tokens=reply.usage.total_tokens, cost_usd=reply.usage.cost_usd)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _completion_cap(self, prompt: int, asked: int | None, price: ModelPrice | None) -> int:
        """The ``max_tokens`` to send: what the budgets leave after the prompt, at most."""
        ctx = self._ctx
        floor = self._config.llm.min_completion_tokens
        left = ctx.remaining_tokens - prompt
        if left < floor:
            raise TokenBudgetExhausted(
                f"the prompt needs ~{prompt} tokens and the task has {ctx.remaining_tokens} "
                f"left: fewer than {floor} for the reply; the call was not made"
            )
        cap = left if asked is None else min(asked, left)
        if price is not None:
            money = ctx.remaining_cost_usd - prompt * price.input / 1000.0
            affordable = left if price.output <= 0 else int(money / (price.output / 1000.0))
            if money < 0 or affordable < floor:
                raise CostBudgetExhausted(
                    f"${ctx.remaining_cost_usd:.6f} left pays for the prompt (~{prompt} tokens) "
                    f"and {max(0, affordable)} completion tokens: fewer than {floor}; the call "
                    "was not made"
                )
            cap = min(cap, affordable)
        return max(1, cap)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        llm = self._config.llm
        if retry_after is not None:
            return min(max(0.0, retry_after), llm.retry_max_ms / 1000.0)
        base = exponential_delay(llm.retry_initial_ms, retry + 1, cap=llm.retry_max_ms) / 1000.0
        return base * (0.5 + random.random() / 2)  # jitter: replicas do not retry in step

    # -- one request ---------------------------------------------------------------------

    async def _complete(self, sdk: Any, body: dict[str, Any], bounds: Bounds, price: ModelPrice | None) -> LlmReply:
        limit = self._max_reply_chars(bounds.completion_cap)
        # JSON may spend 6 bytes on a character (\uXXXX): past that, the reply is too long
        # for the max_tokens sent, and it is not read into memory any further
        data = await read_reply(sdk, body, 6 * limit + REPLY_ENVELOPE_BYTES)
        if data is None:
            raise self._too_long(body, bounds, price, None)
        text = data.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text)
        except ValueError:
            raise Failed(LlmBadReply(f"the LLM reply is not JSON: {text[:200]!r}")) from None
        if not isinstance(doc, dict):
            raise Failed(LlmBadReply("the LLM reply is not a JSON object"))
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else None
        try:
            choice = doc["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            reply = self._reply(body, None, [], usage, None, bounds, price, doc.get("model"))
            raise Failed(LlmBadReply(f"the LLM reply has no choices[0].message: {text[:200]!r}"), reply) from None
        content = message.get("content")
        calls = tool_calls_of(message.get("tool_calls"))
        reply = self._reply(
            body,
            content if isinstance(content, str) else None,
            calls,
            usage,
            choice.get("finish_reason"),
            bounds,
            price,
            doc.get("model"),
        )
        if calls is None:
            raise Failed(LlmBadReply("the LLM reply has malformed tool_calls"), reply)
        if written_chars(reply.content, reply.tool_calls) > limit:
            raise self._too_long(body, bounds, price, doc.get("model"))
        return reply

    def _too_long(self, body: dict[str, Any], bounds: Bounds, price: ModelPrice | None, model: Any) -> Failed:
        """A reply longer than the ``max_tokens`` sent allows: charged the cap, refused."""
        limit = self._max_reply_chars(bounds.completion_cap)
        charged = self._reply(body, None, [], None, None, bounds, price, model, received=limit)
        self._disputes[id(charged)] = (
            f"the reply ran past {limit} characters, more than max_tokens="
            f"{bounds.completion_cap} allows; it was not read further"
        )
        return Failed(
            LlmBadReply(
                f"the LLM reply is longer than the max_tokens={bounds.completion_cap} sent "
                f"allows (over {limit} characters): the endpoint ignores max_tokens"
            ),
            charged,
        )

    async def _streamed(self, sdk: Any, body: dict[str, Any], bounds: Bounds, price: ModelPrice | None) -> LlmReply:
        limit = self._max_reply_chars(bounds.completion_cap)
        async with sorted_errors():
            stream = await sdk.chat.completions.create(**request_kwargs({**body, "stream": True}))
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage: dict[str, Any] | None = None
        model = None
        received = 0
        try:
            async for chunk in stream:
                doc = chunk.model_dump() if hasattr(chunk, "model_dump") else dict(chunk)
                model = doc.get("model") or model
                if isinstance(doc.get("usage"), dict):
                    usage = doc["usage"]
                for choice in doc.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content")
                    if isinstance(piece, str) and piece:
                        received += len(piece)
                        if received > limit:
                            break
                        text.append(piece)
                        await self._ctx.emit(piece)
                    for part in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(part.get("index") or 0), {"id": "", "name": "", "arguments": ""})
                        fn = part.get("function") or {}
                        slot["id"] = part.get("id") or slot["id"]
                        slot["name"] += fn.get("name") or ""
                        slot["arguments"] += fn.get("arguments") or ""
                        received += len(fn.get("name") or "") + len(fn.get("arguments") or "")
                    finish = choice.get("finish_reason") or finish
                if received > limit:
                    break  # stop reading: the endpoint ignores max_tokens
        except CogoError:
            raise
        except Exception as exc:  # cut off mid-stream: what arrived was paid for
            partial = self._reply(body, "".join(text), [], None, None, bounds, price, model)
            kind = LlmBadReply if isinstance(exc, ValueError) else LlmError
            raise Failed(kind(f"the LLM stream broke off: {type(exc).__name__}: {exc}"), partial) from None
        if received > limit:
            with contextlib.suppress(Exception):
                await stream.close()
            raise self._too_long(body, bounds, price, model)
        tool_calls = [
            ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}") for i, c in sorted(calls.items())
        ]
        return self._reply(body, "".join(text) if text else None, tool_calls, usage, finish, bounds, price, model)

    def _reply(
        self,
        body: dict[str, Any],
        content: str | None,
        calls: list[ToolCall] | None,
        usage: dict[str, Any] | None,
        finish: str | None,
        bounds: Bounds,
        price: ModelPrice | None,
        model: Any,
        *,
        received: int | None = None,
    ) -> LlmReply:
        """The reply, charged what it reported within what was sent and received."""
        written = written_chars(content, calls) if received is None else received
        prompt_tokens = usage_count(usage, "prompt_tokens")
        completion_tokens = usage_count(usage, "completion_tokens")
        total = usage_count(usage, "total_tokens") or prompt_tokens + completion_tokens
        estimated = not total
        if estimated:  # nothing reported: it was still spent, so charge the estimate
            per = self._config.llm.chars_per_token
            prompt_tokens, completion_tokens = bounds.prompt_estimate, math.ceil(written / per)
        elif not prompt_tokens and not completion_tokens:
            prompt_tokens = total  # an unsplit total is priced at the input rate
        reported = prompt_tokens + completion_tokens if not estimated else None
        disputes: list[str] = []
        floor = math.ceil(written / self._config.llm.max_chars_per_token)
        if completion_tokens < floor:
            disputes.append(
                f"completion_tokens {completion_tokens} for {written} characters received (at least {floor})"
            )
            completion_tokens = floor
        elif completion_tokens > bounds.completion_cap:
            disputes.append(f"completion_tokens {completion_tokens} over the max_tokens {bounds.completion_cap} sent")
            completion_tokens = bounds.completion_cap
        if prompt_tokens > bounds.prompt_ceiling:
            disputes.append(
                f"prompt_tokens {prompt_tokens} for a prompt of at most {bounds.prompt_ceiling} (one per byte sent)"
            )
            prompt_tokens = bounds.prompt_ceiling
        total = prompt_tokens + completion_tokens
        disputed = None
        if disputes and not estimated:
            disputed = f"the endpoint reported {reported} tokens: " + "; ".join(disputes)
            log.warning("%s: LLM usage not believed: %s", self._ctx.task_id, disputed)
        cost = 0.0 if price is None else round(price.cost_usd(prompt_tokens, completion_tokens), 9)
        usage_ = LlmUsage(prompt_tokens, completion_tokens, total, cost, estimated)
        name = model if isinstance(model, str) and model else body["model"]
        reply = LlmReply(content, calls or [], usage_, name, finish)
        if disputed:
            self._disputes[id(reply)] = disputed  # for its llm_call event (_record)
        return reply

    async def _record(
        self,
        body: dict[str, Any],
        started: float,
        prompt: int,
        cap: int,
        reply: LlmReply | None,
        error: CogoError | None,
        retry: int,
    ) -> None:
        """The ``llm_call`` event of one request (answered or not)."""
        from cogo.sdk.steps import current_step

        ctx = self._ctx
        u = reply.usage if reply is not None else LlmUsage()
        data = LlmCall(
            model=body["model"],
            step=current_step(),
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cost_usd=u.cost_usd,
            finish_reason=reply.finish_reason if reply else None,
            usage_estimated=u.estimated,
            usage_disputed=self._disputes.pop(id(reply), None) if reply else None,
            prompt_estimate=prompt,
            max_tokens=cap,
            stream=bool(body.get("stream_options")),
            retry=retry,
            tool_calls=len(reply.tool_calls) if reply else 0,
            reply_model=reply.model if reply else None,
            delivery=ctx._delivery.delivered,
        )
        event = order_event(
            LLM_CALL,
            ctx.order,
            event_id=f"{ctx.task_id}:llm:{ctx.attempt}.{ctx._delivery.delivered}.{self._calls}",
            actor=ctx._runtime.name,
            duration_ms=round((time.time() - started) * 1000.0, 3),
            usage=Usage(tokens=u.total_tokens, cost_usd=u.cost_usd),
            error_code=error.code if error else None,
            error=str(error)[:1000] if error else None,
            version=ctx.version or ctx.order.version,
            data=data,
        )
        await ctx._runtime.publish_all([event_message(event, ctx.order.token)])
        if tracing.enabled():
            tracing.record(
                f"chat {body['model']}",
                start=started,
                kind="client",
                attributes=_genai(data),
                error_code=error.code if error else None,
                error_message=str(error or ""),
            )


def _genai(call: LlmCall) -> dict[str, Any]:
    """The call's span attributes, in OpenTelemetry's GenAI semantic conventions."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": call.model,
        "gen_ai.request.max_tokens": call.max_tokens,
        "gen_ai.response.model": call.reply_model,
        "gen_ai.response.finish_reasons": [call.finish_reason] if call.finish_reason else None,
        "gen_ai.usage.input_tokens": call.prompt_tokens,
        "gen_ai.usage.output_tokens": call.completion_tokens,
        "cogo.step": call.step,
        "cogo.llm.cost_usd": call.cost_usd,
        "cogo.llm.retry": call.retry,
        "cogo.llm.usage_estimated": call.usage_estimated,
    }
