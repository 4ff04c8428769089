"""The OpenAI-compatible chat protocol behind ``ctx.llm``: reply types, the client, errors.

The client is the official ``openai`` SDK with its own retries off (``max_retries=0``): Cogo
decides retries, inside the attempt's deadline (``cogo.sdk.llm``). This module sorts what
can go wrong with a request: ``Retryable`` (a 429 or 5xx answer, or a connection that was
never made: safe to send again), ``Failed`` (for good in this attempt: a timeout or a
connection lost after the request went out may have been billed, ``llm.error``; other 4xx
answers ``llm.rejected``; a reply without choices, message or valid JSON ``llm.bad_reply``).
It also reads replies within a byte cap and counts the characters the budget is checked by.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from cogo.config import LLM_API_KEY_ENV, LLM_BASE_URL_ENV, Config, env
from cogo.errors import CogoError, LlmBadReply, LlmError, LlmNotConfigured, LlmRequestRejected

BASE_URL_ENV, API_KEY_ENV = LLM_BASE_URL_ENV, LLM_API_KEY_ENV


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


class Bounds(msgspec.Struct, frozen=True):
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
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
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
                api_key=self._api_key or "no-key",
                base_url=self.base_url,
                max_retries=0,
                timeout=None,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class Retryable(Exception):
    """A request that is safe to send again: answered 429/5xx, or never connected."""

    def __init__(self, error: LlmError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


class Failed(Exception):
    """A request that failed for good in this attempt (``reply``: what was paid, if known)."""

    def __init__(self, error: CogoError, reply: LlmReply | None = None) -> None:
        self.error = error
        self.reply = reply


def request_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """The SDK's arguments for ``body``: its own fields, everything else as ``extra_body``."""
    known = {"model", "messages", "max_tokens", "tools", "stream", "stream_options"}
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    return {**kwargs, "extra_body": extra or None}


async def read_reply(sdk: Any, body: dict[str, Any], max_bytes: int) -> bytes | None:
    """POST the body and read the reply; None once it is longer than ``max_bytes``."""
    async with sorted_errors():
        create = sdk.chat.completions.with_streaming_response.create
        async with create(**request_kwargs(body)) as response:
            chunks: list[bytes] = []
            size = 0
            try:
                async for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        return None  # closing the response drops the connection
                    chunks.append(chunk)
            except Exception as exc:  # the transport's own error, whichever it is
                raise Failed(LlmError(f"the LLM connection failed: {exc}")) from None
            return b"".join(chunks)


@contextlib.asynccontextmanager
async def sorted_errors() -> AsyncIterator[None]:
    """The SDK's errors sorted into retryable, rejected and failed."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        status = exc.status_code
        text = _error_text(exc)
        if status == 429 or status >= 500:
            raise Retryable(
                LlmError(f"the LLM endpoint answered {status}: {text}"), _retry_after(exc.response)
            ) from None
        if status == 408:
            raise Failed(LlmError(f"the LLM endpoint answered 408: {text}")) from None
        raise Failed(LlmRequestRejected(f"the LLM endpoint refused the request ({status}): {text}")) from None
    except openai.APITimeoutError:
        raise Failed(LlmError("the LLM request timed out")) from None
    except openai.APIConnectionError as exc:
        cause = exc.__cause__
        # by name: the SDK's transport is httpx in some releases and httpx2 in others
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout", "PoolTimeout"):
            raise Retryable(LlmError(f"cannot connect to the LLM endpoint: {cause}")) from None
        # the request may have reached the endpoint (and been billed): not retried here
        raise Failed(LlmError(f"the LLM connection failed: {cause or exc}")) from None
    except openai.APIResponseValidationError as exc:
        raise Failed(LlmBadReply(f"the LLM reply does not fit the protocol: {exc}")) from None


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


def tool_calls_of(raw: Any) -> list[ToolCall] | None:
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


def prompt_chars(messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None) -> int:
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


def has_media(content: Any) -> bool:
    """Content parts other than text (images, audio): tokens the bytes sent do not bound."""
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type", "text") != "text" for p in content)


def written_chars(content: str | None, calls: Sequence[ToolCall] | None) -> int:
    """The characters a reply holds: its text and its tool calls' names and arguments."""
    return len(content or "") + sum(len(c.name) + len(c.arguments) for c in calls or [])


def usage_count(usage: dict[str, Any] | None, key: str) -> int:
    value = (usage or {}).get(key)
    return value if isinstance(value, int) and value > 0 else 0
