"""A real OTLP/HTTP trace receiver on 127.0.0.1: ``POST /v1/traces`` bodies decoded as
``ExportTraceServiceRequest`` with the OpenTelemetry project's own protobuf definitions
(``opentelemetry-proto``), every span kept as a ``ReceivedSpan``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from cogo.devllm import send_body, serve_local, stop_local


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    start_ns: int
    end_ns: int


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                got = []
                for rs in request.resource_spans:
                    resource = _attrs(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            got.append(
                                ReceivedSpan(
                                    s.name,
                                    s.trace_id.hex(),
                                    s.span_id.hex(),
                                    s.parent_span_id.hex(),
                                    s.kind,
                                    _attrs(s.attributes),
                                    resource,
                                    s.status.code,
                                    s.start_time_unix_nano,
                                    s.end_time_unix_nano,
                                )
                            )
                with receiver._lock:
                    receiver.spans.extend(got)
                    receiver.requests += 1
                data = ExportTraceServiceResponse().SerializeToString()
                send_body(self, 200, data, "application/x-protobuf")

            def log_message(self, *args: Any) -> None:
                pass

        self._server, self.url = serve_local(Handler)
        return self

    def stop(self) -> None:
        stop_local(self._server)

    def named(self, prefix: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name.startswith(prefix)]
