"""An OpenAI-compatible chat endpoint on 127.0.0.1 that answers from a script.

``cogo.testing``'s ``chat_server`` fixture is one; ``cogo dev-llm`` serves one on its own, to
try ``ctx.llm`` against a ``cogo up`` without a real model (no pytest needed):

    cogo dev-llm --port 8099 --echo          # then: COGO_LLM_BASE_URL=http://127.0.0.1:8099 cogo up
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer of ``ChatServer``."""

    content: str | None = "ok"
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    prompt_tokens: int = 10
    completion_tokens: int = 5
    usage: bool = True  # False: a reply without usage (the caller must estimate)
    delay_s: float = 0.0
    finish_reason: str | None = None
    raw: str | None = None  # send this body as is (a malformed reply)
    retry_after: float | None = None  # a Retry-After header (with a 429 or 503)
    word_delay_s: float = 0.0  # streaming: a pause before each word
    honest: bool = True  # False: usage and text as scripted, past max_tokens (a lying endpoint)


@dataclass
class ChatServer:
    """``/v1/chat/completions`` on 127.0.0.1 answering from a script; counts every call.

    ``script`` is consumed in order; when it runs out, ``default`` answers. Streaming
    requests (``"stream": true``) get Server-Sent Events, word by word, with a final usage
    chunk. ``requests`` holds every request body received. Like a real endpoint it never
    reports more completion tokens than the request's ``max_tokens`` (the reply then ends
    with ``finish_reason: "length"``).
    """

    script: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    port: int = 0  # 0: any free port
    echo: bool = False  # the default answer repeats the last user message (cogo dev-llm)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def start(self) -> ChatServer:
        chat = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    self._answer()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its deadline passed): as a real server, move on

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with chat._lock:
                    chat.requests.append({"path": self.path, "headers": _headers(self), **body})
                    reply = chat.script.pop(0) if chat.script else chat.default
                    if reply is chat.default and chat.echo:
                        reply = replace(reply, content=_last_user_text(body))
                cap = body.get("max_tokens")
                if isinstance(cap, int) and reply.completion_tokens > cap and reply.honest:
                    reply = replace(reply, completion_tokens=cap, finish_reason="length")
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    extra = {"Retry-After": str(reply.retry_after)} if reply.retry_after else {}
                    self._send(reply.status, {"error": {"message": f"scripted {reply.status}"}}, headers=extra)
                elif reply.raw is not None:
                    self._send(200, None, raw=reply.raw.encode())
                elif body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._send(200, _completion(body, reply))

            def _send(
                self,
                status: int,
                doc: Any,
                raw: bytes | None = None,
                headers: dict[str, str] | None = None,
            ) -> None:
                data = raw if raw is not None else json.dumps(doc).encode()
                send_body(self, status, data, headers=headers)

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                words = (reply.content or "").split(" ")
                for i, word in enumerate(words):
                    if reply.word_delay_s:
                        time.sleep(reply.word_delay_s)
                    piece = word if i == 0 else " " + word
                    self._chunk({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}, body)
                if reply.tool_calls:
                    deltas = [{**call, "index": i} for i, call in enumerate(reply.tool_calls)]
                    self._chunk(
                        {"choices": [{"index": 0, "delta": {"tool_calls": deltas}, "finish_reason": None}]}, body
                    )
                finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
                self._chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}, body)
                if reply.usage:
                    self._chunk({"choices": [], "usage": _usage(reply)}, body)
                self._write(b"data: [DONE]\n\n")
                self._write(b"")

            def _chunk(self, doc: dict[str, Any], body: dict[str, Any]) -> None:
                doc = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": body.get("model"), **doc}
                self._write(b"data: " + json.dumps(doc).encode() + b"\n\n")

            def _write(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self._server, self.url = serve_local(Handler, self.port)
        return self

    def stop(self) -> None:
        stop_local(self._server)

    def reply(self, content: str | None = "ok", **kwargs: Any) -> ChatServer:
        """Append one answer to the script."""
        self.script.append(Reply(content=content, **kwargs))
        return self


def tool_call(name: str, call_id: str, **arguments: Any) -> dict[str, Any]:
    """One tool call of a scripted reply, as the endpoint sends it:

    chat_server.reply(None, tool_calls=[tool_call("refund", "c1", order_id=7)])
    """
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": call_id, "type": "function", "function": function}


def serve_local(handler: type[BaseHTTPRequestHandler], port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``handler`` on 127.0.0.1 (``port`` 0: any free one) from a daemon thread: the
    server (``stop_local`` ends it) and its base URL. Test doubles of HTTP services use it."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop_local(server: ThreadingHTTPServer | None) -> None:
    """Stop a ``serve_local`` server and close its socket."""
    if server is not None:
        server.shutdown()
        server.server_close()


def send_body(
    handler: BaseHTTPRequestHandler,
    status: int,
    data: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    """Answer the request ``handler`` serves with ``status`` and ``data``, sized."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return "ok"


def serve(port: int, *, reply: str = "ok", echo: bool = False) -> int:
    """``cogo dev-llm``: serve until Ctrl-C, printing the URL and one line per request."""
    server = ChatServer(default=Reply(content=reply), port=port, echo=echo).start()
    print(f"cogo dev-llm: {server.url}/v1/chat/completions (OpenAI-compatible, no key needed)")
    print(f"  use it:  COGO_LLM_BASE_URL={server.url} cogo up    Ctrl-C to stop", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            with server._lock:
                new = server.requests[seen:]
            for request in new:
                text = _last_user_text(request)
                print(f"  {request.get('model')}: {text[:80]!r}", flush=True)
            seen += len(new)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def _headers(handler: BaseHTTPRequestHandler) -> dict[str, str]:
    """The request's headers, names in one case (``Authorization``) whatever the client sent."""
    return {name.title(): value for name, value in handler.headers.items()}


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    doc: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
            }
        ],
    }
    if reply.usage:
        doc["usage"] = _usage(reply)
    return doc
