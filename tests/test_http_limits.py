"""Request limits and error shapes of the facade: odd JSON on every JSON endpoint, one error
body everywhere, the Allow header, and slow clients over a real socket (issue 14)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import uvicorn

from cogo.http import server as http_server
from cogo.http.app import create_app
from cogo.http.jsonbody import MAX_DEPTH
from cogo.http.state import AppState
from cogo.runtime.system import _extra_routes
from cogo.streams.policies import PolicyStore

TOKEN = "t0k"


@pytest.fixture
async def state(nc, js, config, data_dir):
    policies = PolicyStore(js)
    await policies.start()
    yield AppState(nc=nc, config=config, policies=policies, data_dir=data_dir, api_token=TOKEN)
    await policies.stop()


@pytest.fixture
async def http(state):
    app = create_app(state, extra_routes=_extra_routes())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://cogo",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield client


async def _json_posts(http: httpx.AsyncClient) -> list[str]:
    spec = (await http.get("/openapi.json")).json()
    posts = []
    for path, ops in spec["paths"].items():
        op = ops.get("post")
        if op and "requestBody" in op:
            posts.append(path.replace("{rollout_id}", "r-1"))
    return sorted(posts)


ODD = {
    "nested 1,000 deep": (b"[" * 1000 + b"]" * 1000, "request.json_too_deep"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "request.json_too_deep"),
    "objects 200 deep": (b'{"a":' * 200 + b"1" + b"}" * 200, "request.json_too_deep"),
    "a 5,000-digit integer": (b'{"n": 1' + b"0" * 5000 + b"}", "request.number_out_of_range"),
    "a 1,001-digit integer": (b'{"n": 1' + b"0" * 1000 + b"}", "request.number_out_of_range"),
    "1e400": (b'{"n": 1e400}', "request.number_out_of_range"),
    "NaN": (b'{"n": NaN}', "request.invalid_json"),
    "a lone surrogate": (b'{"s": "\\ud800"}', "request.invalid_json"),
    "not JSON": (b"{nope", "request.invalid_json"),
}


@pytest.mark.parametrize("case", list(ODD))
async def test_odd_json_is_a_400_on_every_json_endpoint(http, case):
    body, code = ODD[case]
    posts = await _json_posts(http)
    assert "/api/tasks" in posts and "/api/sql" in posts and len(posts) >= 10
    for path in posts:
        r = await http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
        assert r.json()["code"] == code, (path, r.text[:200])


async def test_json_within_the_limits_is_taken(http, nats_server):
    deep = {
        "route": "echo.run.0",
        "payload": {"x": json.loads("[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3))},
    }
    r = await http.post("/api/tasks", json=deep)
    assert r.status_code == 202, r.text
    big = {"route": "echo.run.0", "payload": {"n": 2**70, "m": -(10**999), "f": 1.5e308}}
    assert (await http.post("/api/tasks", json=big)).status_code == 202


async def test_one_error_shape_with_stable_codes(http):
    cases = [
        (await http.get("/api/nope"), 404, "http.not_found"),
        (await http.patch("/api/rollouts"), 405, "http.method_not_allowed"),
        (await http.get("/api/tasks", headers={"Authorization": "Bearer no"}), 401, "auth.unauthorized"),
        (await http.post("/api/tasks", json={"route": "x y"}), 422, "request.invalid"),
        (await http.post("/api/tasks", json={"route": "no.such.route"}), 422, "route.unknown"),
        (
            await http.post("/api/tasks", json={"route": "echo.run.0", "payload": {"__assignment": {"ttl_ms": 0}}}),
            422,
            "assignment.invalid",
        ),
        (await http.post("/api/tasks", content=b"x" * (2 * 1024 * 1024)), 413, "request.too_large"),
        (await http.post("/api/sql", json={"sql": "SELECT 1"}), 503, "service.unavailable"),
        (await http.get("/api/orchestrator/state", params={"runId": "nope"}), 404, "workflow.run_not_found"),
        (await http.post("/api/orchestrator/plan", json={"workflowId": "nope"}), 404, "workflow.not_found"),
        (await http.get("/api/artifacts/t/%2e%2e/x"), 400, "artifact.key_invalid"),
        (await http.get("/api/tasks/nope"), 503, "service.unavailable"),
    ]
    for response, status, code in cases:
        body = response.json()
        assert (response.status_code, body.get("code")) == (status, code), response.text[:300]
        assert set(body) == {"detail", "code"}
        if status == 422:
            assert isinstance(body["detail"], list) and body["detail"][0]["loc"][0] == "body"
    assert cases[1][0].headers["allow"] == "GET, HEAD, POST"  # both routes of /api/rollouts
    assert cases[2][0].headers["www-authenticate"] == "Bearer"


async def test_replay_validates_its_body(http):
    for body in (b"[null, null]", b'{"unexpected": 1}', b"5"):
        r = await http.post("/api/projections/replay", content=body)
        assert r.status_code in (400, 422), (body, r.text)
    # no body (or {}) passes validation and reaches the handler: no projector here
    r = await http.post("/api/projections/replay")
    assert (r.status_code, r.json()["code"]) == (503, "service.unavailable")


# -- slow clients, over a real socket ----------------------------------------------------


@pytest.fixture
async def served(state, monkeypatch):
    """The facade under uvicorn with our server config, limits shortened for the test."""
    monkeypatch.setattr(http_server.TimedH11Protocol, "head_timeout_s", 0.5)
    state.body_timeout_s = 0.5
    app = create_app(state, extra_routes=_extra_routes())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(http_server.server_config(app))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _trickle(port: int, head: bytes, then: bytes, limit_s: float = 30.0) -> bytes:
    """Send ``head``, then ``then`` a byte at a time; return what the server answered once
    it closed the connection (AssertionError if it never did within ``limit_s``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(head)
        await writer.drain()
        deadline = time.monotonic() + limit_s
        for byte in [then[i : i + 1] for i in range(len(then))] * 1000:
            assert time.monotonic() < deadline, "the server kept a trickling client forever"
            try:
                writer.write(byte)
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(4096), 0.1)
            except TimeoutError:
                continue
            except (ConnectionError, OSError):
                break
            if not chunk:
                break
            answer += chunk
        else:
            raise AssertionError("the server kept a trickling client forever")
    finally:
        writer.close()
    return answer


async def test_a_client_trickling_headers_is_cut_off(served):
    answer = await _trickle(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: y\r\n")
    assert answer == b""  # closed before any request was complete: nothing was answered


async def test_a_client_trickling_a_body_gets_408(served):
    head = (
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    answer = await _trickle(served, head, b" ")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"request.timeout"' in answer


async def test_a_prompt_client_on_the_same_server_is_served(served):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served}") as client:
        for _ in range(3):  # keep-alive: each request on the connection gets its own deadline
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(0.3)


async def test_openapi_documents_what_each_route_answers(http):
    spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    for public in ("/healthz", "/metrics", "/"):
        op = paths[public]["get"]
        assert "401" not in op["responses"] and "security" not in op, public
    tasks = paths["/api/tasks"]["post"]
    assert {"202", "400", "401", "408", "413", "422", "503"} <= set(tasks["responses"])
    assert tasks["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TaskRequest")
    schema = spec["components"]["schemas"]["TaskRequest"]
    assert "echo.run.0" in schema["properties"]["route"]["enum"]  # the routes declared now
    assignment = schema["properties"]["payload"]["properties"]["__assignment"]["anyOf"][0]
    assert assignment["properties"]["max_tokens"]["anyOf"][0]["exclusiveMinimum"] == 0
    latency = paths["/api/metrics/bus/latency"]["get"]
    assert {p["name"] for p in latency["parameters"]} == {"window", "route", "bucket"}
    assert all(p["in"] == "query" for p in latency["parameters"])
    rollout = paths["/api/rollouts/{rollout_id}"]["get"]["responses"]
    assert {"200", "401", "404", "422", "503"} <= set(rollout)
    replay = paths["/api/projections/replay"]["post"]
    assert replay["requestBody"]["required"] is False
    assert {"409", "503"} <= set(replay["responses"])
    error = spec["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"detail", "code"}
