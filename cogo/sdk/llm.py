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

The client is the official ``openai`` SDK with its own retries off (``max_retries=0``): Cogo
decides retries, inside the attempt's deadline. Retried here, with backoff (or the
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
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from cogo import tracing
from cogo.config import (
    LLM_API_KEY_ENV,
    LLM_BASE_URL_ENV,
    Config,
    ModelPrice,
    env,
    exponential_delay,
)
from cogo.errors import (
    CogoError,
    CostBudgetExhausted,
    LlmBadReply,
    LlmError,
    LlmNotConfigured,
    LlmRequestRejected,
    ModelNotAllowed,
    TokenBudgetExhausted,
)
from cogo.streams.catalogue import LLM_CALL, LlmCall
from cogo.streams.envelope import Usage
from cogo.streams.events import event_message, order_event

if TYPE_CHECKING:
    from cogo.sdk.context import TaskContext

log = logging.getLogger(__name__)

BASE_URL_ENV, API_KEY_ENV = LLM_BASE_URL_ENV, LLM_API_KEY_ENV
MESSAGE_OVERHEAD_TOKENS = 4
MIN_CALL_S = 0.2  # less time than this left before the deadline: do not start a call
REPLY_ENVELOPE_BYTES = 64 * 1024  # a reply's JSON around its text: ids, usage, tool schemas


class ToolCall(msgspec.Struct, frozen=True):
    """A function the model asked for: ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str = "{}"

    def args(self) -> Any:
        """The arguments decoded; ``LlmBadReply`` if the model wrote no valid JSON."""
        try:
            return json.loads(self.arguments or "{}")
        except ValueError:
            raise LlmBadReply(
                f"tool call {self.name!r} has arguments that are not JSON: {self.arguments[:200]!r}"
            ) from None


class LlmUsage(msgspec.Struct, frozen=True):
    """What one call cost; ``estimated`` when the reply reported no usage."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False


class _Bounds(msgspec.Struct, frozen=True):
    """What one request can honestly be charged: the prompt's estimate and ceiling, and the
    completion's cap (the ``max_tokens`` sent)."""

    prompt_estimate: int
    prompt_ceiling: int
    completion_cap: int


class LlmReply(msgspec.Struct, frozen=True):
    """The answer of ``ctx.llm.chat``.

    reply = await ctx.llm.chat([{"role": "user", "content": "Hi"}])
    print(reply.content, reply.usage.total_tokens)
    """

    content: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    usage: LlmUsage = LlmUsage()
    model: str = ""
    finish_reason: str | None = None

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation for the next turn."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]  # fmt: skip
        return out

    @classmethod
    def from_dict(cls, data: Any) -> LlmReply:
        """A reply from its JSON form (what ``ctx.step`` journals and returns)."""
        if isinstance(data, LlmReply):
            return data
        return msgspec.convert(data, cls)


def endpoint_url(config: Config) -> str:
    """The API root the SDK appends ``/chat/completions`` to (``/v1`` added if missing)."""
    url = (env(BASE_URL_ENV) or config.llm.base_url).strip().rstrip("/")
    if url and not url.endswith("/v1"):
        url += "/v1"
    return url


class LlmClient:
    """One worker process's connection pool to the endpoint (opened on first use)."""

    def __init__(self, config: Config) -> None:
        # read once: the endpoint is deployment config, never task input (no SSRF)
        self.base_url = endpoint_url(config)
        self._api_key = env(API_KEY_ENV, "")
        self._client: Any = None

    def sdk(self) -> Any:
        if not self.base_url:
            raise LlmNotConfigured(
                f"ctx.llm has no endpoint: set {BASE_URL_ENV} in the environment of `cogo up` / "
                "`cogo run` (or [llm] base_url in cogo.toml) before it starts: each worker "
                "reads it once, at start. In tests the cogo_env fixture points it at "
                "chat_server by itself; `cogo dev-llm` serves a fake endpoint to try it"
            )
        if self._client is None:
            import openai  # imported on first use: most workers never call an LLM

            # the SDK insists on a key: a local endpoint without auth gets a placeholder
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key or "no-key", base_url=self.base_url, max_retries=0,
                timeout=None,
            )  # fmt: skip
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class LlmSession:
    """``ctx.llm``: the task's view of the endpoint, metered against its assignment."""

    def __init__(self, ctx: TaskContext, client: LlmClient) -> None:
        self._ctx = ctx
        self._client = client
        self._config = ctx._runtime.config
        self._calls = 0
        self._disputes: dict[int, str] = {}  # id(reply) -> why its usage was not believed

    def estimate_prompt(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None = None
    ) -> int:
        """Prompt tokens by the estimate the budget checks use (see the module docstring)."""
        per = self._config.llm.chars_per_token
        chars = _prompt_chars(messages, tools)
        return math.ceil(chars / per) + MESSAGE_OVERHEAD_TOKENS * len(messages)

    def _bounds(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None, cap: int
    ) -> _Bounds:
        sent = json.dumps([messages, list(tools or [])], ensure_ascii=False, default=str)
        ceiling = len(sent.encode()) + MESSAGE_OVERHEAD_TOKENS * (len(messages) + 1)
        if any(_has_media(m.get("content")) for m in messages):
            ceiling = sys.maxsize  # an image's tokens are not bounded by its URL's bytes
        return _Bounds(
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
                f"model {model!r} is not allowed on route {ctx.route} (allowed: "
                f"{', '.join(allowed)}); nothing was sent"
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
            except _Retryable as exc:
                delay = self._delay(retry, exc.retry_after)
                await self._record(body, started, prompt_estimate, cap, None, exc.error, retry)
                if retry < retries and time.time() + delay + MIN_CALL_S < ctx.deadline:
                    log.info("%s: LLM call %s; retrying in %.2fs", ctx.task_id, exc.error, delay)
                    await asyncio.sleep(delay)
                    continue
                raise exc.error from None
            except _Failed as exc:
                await self._record(body, started, prompt_estimate, cap, exc.reply, exc.error, retry)
                if exc.reply is not None:
                    ctx.report_usage(tokens=exc.reply.usage.total_tokens,
                                     cost_usd=exc.reply.usage.cost_usd)  # fmt: skip
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

    async def _complete(
        self, sdk: Any, body: dict[str, Any], bounds: _Bounds, price: ModelPrice | None
    ) -> LlmReply:
        limit = self._max_reply_chars(bounds.completion_cap)
        # JSON may spend 6 bytes on a character (\uXXXX): past that, the reply is too long
        # for the max_tokens sent, and it is not read into memory any further
        data = await _read(sdk, body, 6 * limit + REPLY_ENVELOPE_BYTES)
        if data is None:
            raise self._too_long(body, bounds, price, None)
        text = data.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text)
        except ValueError:
            raise _Failed(LlmBadReply(f"the LLM reply is not JSON: {text[:200]!r}")) from None
        if not isinstance(doc, dict):
            raise _Failed(LlmBadReply("the LLM reply is not a JSON object"))
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else None
        try:
            choice = doc["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            reply = self._reply(body, None, [], usage, None, bounds, price, doc.get("model"))
            raise _Failed(
                LlmBadReply(f"the LLM reply has no choices[0].message: {text[:200]!r}"), reply
            ) from None
        content = message.get("content")
        calls = _tool_calls(message.get("tool_calls"))
        reply = self._reply(body, content if isinstance(content, str) else None, calls, usage,
                            choice.get("finish_reason"), bounds, price, doc.get("model"))  # fmt: skip
        if calls is None:
            raise _Failed(LlmBadReply("the LLM reply has malformed tool_calls"), reply)
        if _written(reply.content, reply.tool_calls) > limit:
            raise self._too_long(body, bounds, price, doc.get("model"))
        return reply

    def _too_long(
        self, body: dict[str, Any], bounds: _Bounds, price: ModelPrice | None, model: Any
    ) -> _Failed:
        """A reply longer than the ``max_tokens`` sent allows: charged the cap, refused."""
        limit = self._max_reply_chars(bounds.completion_cap)
        charged = self._reply(body, None, [], None, None, bounds, price, model, received=limit)
        self._disputes[id(charged)] = (
            f"the reply ran past {limit} characters, more than max_tokens="
            f"{bounds.completion_cap} allows; it was not read further"
        )
        return _Failed(
            LlmBadReply(
                f"the LLM reply is longer than the max_tokens={bounds.completion_cap} sent "
                f"allows (over {limit} characters): the endpoint ignores max_tokens"
            ),
            charged,
        )

    async def _streamed(
        self, sdk: Any, body: dict[str, Any], bounds: _Bounds, price: ModelPrice | None
    ) -> LlmReply:
        limit = self._max_reply_chars(bounds.completion_cap)
        async with _sorted_errors():
            stream = await sdk.chat.completions.create(**_kwargs({**body, "stream": True}))
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
                        slot = calls.setdefault(int(part.get("index") or 0),
                                                {"id": "", "name": "", "arguments": ""})  # fmt: skip
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
            raise _Failed(kind(f"the LLM stream broke off: {type(exc).__name__}: {exc}"),
                          partial) from None  # fmt: skip
        if received > limit:
            with contextlib.suppress(Exception):
                await stream.close()
            raise self._too_long(body, bounds, price, model)
        tool_calls = [ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
                      for i, c in sorted(calls.items())]  # fmt: skip
        return self._reply(body, "".join(text) if text else None, tool_calls, usage, finish,
                           bounds, price, model)  # fmt: skip

    def _reply(
        self, body: dict[str, Any], content: str | None, calls: list[ToolCall] | None,
        usage: dict[str, Any] | None, finish: str | None, bounds: _Bounds,
        price: ModelPrice | None, model: Any, *, received: int | None = None,
    ) -> LlmReply:  # fmt: skip
        """The reply, charged what it reported within what was sent and received."""
        written = _written(content, calls) if received is None else received
        prompt_tokens = _count(usage, "prompt_tokens")
        completion_tokens = _count(usage, "completion_tokens")
        total = _count(usage, "total_tokens") or prompt_tokens + completion_tokens
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
            disputes.append(f"completion_tokens {completion_tokens} for {written} characters "
                            f"received (at least {floor})")  # fmt: skip
            completion_tokens = floor
        elif completion_tokens > bounds.completion_cap:
            disputes.append(f"completion_tokens {completion_tokens} over the max_tokens "
                            f"{bounds.completion_cap} sent")  # fmt: skip
            completion_tokens = bounds.completion_cap
        if prompt_tokens > bounds.prompt_ceiling:
            disputes.append(f"prompt_tokens {prompt_tokens} for a prompt of at most "
                            f"{bounds.prompt_ceiling} (one per byte sent)")  # fmt: skip
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
        self, body: dict[str, Any], started: float, prompt: int, cap: int,
        reply: LlmReply | None, error: CogoError | None, retry: int,
    ) -> None:  # fmt: skip
        """The ``llm_call`` event of one request (answered or not)."""
        from cogo.sdk.steps import current_step

        ctx = self._ctx
        u = reply.usage if reply is not None else LlmUsage()
        data = LlmCall(
            model=body["model"], step=current_step(), prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens, cost_usd=u.cost_usd,
            finish_reason=reply.finish_reason if reply else None,
            usage_estimated=u.estimated,
            usage_disputed=self._disputes.pop(id(reply), None) if reply else None,
            prompt_estimate=prompt, max_tokens=cap,
            stream=bool(body.get("stream_options")), retry=retry,
            tool_calls=len(reply.tool_calls) if reply else 0,
            reply_model=reply.model if reply else None,
            delivery=ctx._delivery.delivered,
        )  # fmt: skip
        event = order_event(
            LLM_CALL, ctx.order,
            event_id=f"{ctx.task_id}:llm:{ctx.attempt}.{ctx._delivery.delivered}.{self._calls}",
            actor=ctx._runtime.name, duration_ms=round((time.time() - started) * 1000.0, 3),
            usage=Usage(tokens=u.total_tokens, cost_usd=u.cost_usd),
            error_code=error.code if error else None, error=str(error)[:1000] if error else None,
            version=ctx.version or ctx.order.version, data=data,
        )  # fmt: skip
        await ctx._runtime.publish_all([event_message(event, ctx.order.token)])
        if tracing.enabled():
            tracing.record(
                f"chat {body['model']}", start=started, kind="client", attributes=_genai(data),
                error_code=error.code if error else None, error_message=str(error or ""),
            )  # fmt: skip


def _genai(call: LlmCall) -> dict[str, Any]:
    """The call's span attributes, in OpenTelemetry's GenAI semantic conventions."""
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai", "gen_ai.request.model": call.model,
        "gen_ai.request.max_tokens": call.max_tokens,
        "gen_ai.response.model": call.reply_model,
        "gen_ai.response.finish_reasons": [call.finish_reason] if call.finish_reason else None,
        "gen_ai.usage.input_tokens": call.prompt_tokens,
        "gen_ai.usage.output_tokens": call.completion_tokens,
        "cogo.step": call.step, "cogo.llm.cost_usd": call.cost_usd,
        "cogo.llm.retry": call.retry, "cogo.llm.usage_estimated": call.usage_estimated,
    }  # fmt: skip


class _Retryable(Exception):
    """A request that is safe to send again: answered 429/5xx, or never connected."""

    def __init__(self, error: LlmError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class _Failed(Exception):
    """A request that failed for good in this attempt (``reply``: what was paid, if known)."""

    def __init__(self, error: CogoError, reply: LlmReply | None = None) -> None:
        self.error = error
        self.reply = reply


def _kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """The SDK's arguments for ``body``: its own fields, everything else as ``extra_body``."""
    known = {"model", "messages", "max_tokens", "tools", "stream", "stream_options"}
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    return {**kwargs, "extra_body": extra or None}


async def _read(sdk: Any, body: dict[str, Any], max_bytes: int) -> bytes | None:
    """POST the body and read the reply; None once it is longer than ``max_bytes``."""
    async with _sorted_errors():
        create = sdk.chat.completions.with_streaming_response.create
        async with create(**_kwargs(body)) as response:
            chunks: list[bytes] = []
            size = 0
            try:
                async for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        return None  # closing the response drops the connection
                    chunks.append(chunk)
            except Exception as exc:  # the transport's own error, whichever it is
                raise _Failed(LlmError(f"the LLM connection failed: {exc}")) from None
            return b"".join(chunks)


@contextlib.asynccontextmanager
async def _sorted_errors() -> AsyncIterator[None]:
    """The SDK's errors sorted into retryable, rejected and failed."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        status = exc.status_code
        text = _error_text(exc)
        if status == 429 or status >= 500:
            raise _Retryable(LlmError(f"the LLM endpoint answered {status}: {text}"),
                             _retry_after(exc.response)) from None  # fmt: skip
        if status == 408:
            raise _Failed(LlmError(f"the LLM endpoint answered 408: {text}")) from None
        raise _Failed(
            LlmRequestRejected(f"the LLM endpoint refused the request ({status}): {text}")
        ) from None
    except openai.APITimeoutError:
        raise _Failed(LlmError("the LLM request timed out")) from None
    except openai.APIConnectionError as exc:
        cause = exc.__cause__
        # by name: the SDK's transport is httpx in some releases and httpx2 in others
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout", "PoolTimeout"):
            raise _Retryable(LlmError(f"cannot connect to the LLM endpoint: {cause}")) from None
        # the request may have reached the endpoint (and been billed): not retried here
        raise _Failed(LlmError(f"the LLM connection failed: {cause or exc}")) from None
    except openai.APIResponseValidationError as exc:
        raise _Failed(LlmBadReply(f"the LLM reply does not fit the protocol: {exc}")) from None


def _error_text(exc: Any) -> str:
    try:
        return str(exc.response.text)[:300]
    except Exception:  # a streamed error body that was not read
        return str(exc)[:300]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _tool_calls(raw: Any) -> list[ToolCall] | None:
    """The message's tool calls; None if they are there but malformed."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        return None
    out = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return None
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        out.append(ToolCall(str(call.get("id") or f"call_{i}"), fn["name"], arguments))
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _prompt_chars(messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None) -> int:
    """The prompt's characters the estimate counts: messages' text, tool calls, tool schemas."""
    chars = 0
    for m in messages:
        chars += len(_text_of(m.get("content")))
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {} if isinstance(call, dict) else {}
            chars += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    if tools:
        chars += len(json.dumps(tools, separators=(",", ":"), default=str))
    return chars


def _has_media(content: Any) -> bool:
    """Content parts other than text (images, audio): tokens the bytes sent do not bound."""
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type", "text") != "text" for p in content
    )


def _written(content: str | None, calls: Sequence[ToolCall] | None) -> int:
    """The characters a reply holds: its text and its tool calls' names and arguments."""
    return len(content or "") + sum(len(c.name) + len(c.arguments) for c in calls or [])


def _count(usage: dict[str, Any] | None, key: str) -> int:
    value = (usage or {}).get(key)
    return value if isinstance(value, int) and value > 0 else 0
