"""An HTTP transport that answers ``POST .../chat/completions`` with ``ctx.llm.chat``.

A framework's own OpenAI client (its message mapping, tool schemas, output parsing) is
kept; only the wire is replaced, so every request it makes goes through Cogo's metered
path: model allowance and budget checked before, ``llm_call`` after, usage charged. The
reply is rebuilt as a ``chat.completion`` document from ``LlmReply``.

A ``CogoError`` raised by ``ctx.llm`` (``policy.model_not_allowed``, ``budget.*``,
``llm.*``) would reach the framework wrapped in the SDK's connection error; the transport
keeps it (``error``) so the integration can raise it as it is.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

try:  # the HTTP library the openai SDK is built on: httpx2 from openai 3, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx  # type: ignore[no-redef]

from cogo.errors import CogoError

if TYPE_CHECKING:
    from cogo.sdk.context import TaskContext
    from cogo.sdk.llm import LlmReply

# never dialled: the transport answers every request itself
BASE_URL = "http://cogo-llm.invalid/v1"
_OWN = {"model", "messages", "max_tokens", "max_completion_tokens", "tools", "stream", "stream_options", "n"}


class LlmTransport(httpx.AsyncBaseTransport):
    """``ctx.llm.chat`` behind an ``httpx`` transport (see the module docstring)."""

    def __init__(self, ctx: TaskContext, *, stream: bool = False) -> None:
        self.ctx = ctx
        self.stream = stream  # stream=True: text deltas go to ctx.emit as they arrive
        self.error: CogoError | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
            return httpx.Response(
                404, json={"error": {"message": f"{request.url.path}: only chat completions go through ctx.llm"}}
            )
        body = json.loads(await request.aread() or b"{}")
        extra = {k: v for k, v in body.items() if k not in _OWN and v is not None}
        self.error = None
        try:
            reply = await self.ctx.llm.chat(
                body.get("messages") or [],
                model=body.get("model") or None,
                max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                tools=body.get("tools"),
                stream=self.stream,
                **extra,
            )
        except CogoError as exc:
            self.error = exc
            raise
        return httpx.Response(200, json=completion(reply))

    def take_error(self) -> CogoError | None:
        """The ``CogoError`` of the last request, once."""
        error, self.error = self.error, None
        return error


def completion(reply: LlmReply) -> dict[str, Any]:
    """``reply`` as the ``chat.completion`` document the OpenAI SDK parses."""
    u = reply.usage
    return {
        "id": "chatcmpl-cogo",
        "object": "chat.completion",
        "created": 0,
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": reply.message(),
                "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
        },
    }


def openai_client(ctx: TaskContext, *, stream: bool = False) -> tuple[Any, LlmTransport]:
    """An ``openai.AsyncOpenAI`` whose requests all go through ``ctx.llm``."""
    import openai

    transport = LlmTransport(ctx, stream=stream)
    client = openai.AsyncOpenAI(
        api_key="cogo",
        base_url=BASE_URL,
        max_retries=0,  # ctx.llm decides retries
        http_client=httpx.AsyncClient(transport=transport),
    )
    return client, transport
