"""``GET /api/flow`` (in-process facade, real NATS, a real dispatcher admitting the route)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from cogo.agents.echo import EchoActor
from cogo.http.flow import routes as flow_routes
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.policies import reset_policy, set_policy
from tests.helpers import EventReader, facade, running, submit

TOKEN = "flow-token"


@pytest.fixture
async def http(nc, js, config, data_dir):
    async with facade(nc, config, data_dir, token=TOKEN, extra_routes=flow_routes) as client:
        yield client


async def poll(http: httpx.AsyncClient, check: Any, path: str = "/api/flow") -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        r = await http.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        if check(body):
            return body
        assert time.monotonic() < deadline, json.dumps(body)
        await asyncio.sleep(0.1)


async def test_flow_shows_running_waiting_and_rate_per_key(http, nats_server, js, config):
    assert (await http.get("/api/flow")).json()["routes"] == []  # no route has limits
    await set_policy(js, "echo.run.0", {"flow": {"concurrency_per_key": 1, "concurrency": 3}})
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        # acme's first task holds the key's one slot for a while, its two others wait
        ids = [
            await submit(js, payload={"sleep_ms": 2500 if i == 0 else 50, "__assignment": {"key": "acme"}})
            for i in range(3)
        ]
        ids.append(await submit(js, payload={"sleep_ms": 2500, "__assignment": {"key": "beta"}}))

        def busy(body: dict[str, Any]) -> bool:
            keys = {k["key"]: k for r in body["routes"] for k in r["keys"]}
            return keys.get("acme", {}).get("waiting") == 2 and keys.get("beta", {}).get("running")

        body = await poll(http, busy)
        (route,) = body["routes"]
        assert route["route"] == "echo.run.0" and route["admitter"].startswith("dispatcher@")
        assert route["limits"] == {"concurrency": 3, "concurrency_per_key": 1, "rate_per_key_s": None, "burst": None}
        assert route["running"] == 2 and route["waiting"] == 2
        keys = {k["key"]: k for k in route["keys"]}
        assert keys["acme"] == {
            "key": "acme",
            "running": 1,
            "waiting": 2,
            "waiting_by_priority": {"5": 2},
            "rate_per_s": 0.1,
            "tokens": None,
            "held_by": "concurrency_per_key",  # 1 in 10 s
        }
        assert keys["beta"]["running"] == 1 and keys["beta"]["held_by"] is None
        assert (await http.get("/api/flow?route=echo.run.0")).json()["routes"][0]["route"]
        await EventReader(js).wait_terminal(ids, timeout=30)
        body = await poll(http, lambda b: b["routes"][0]["running"] == 0)
        assert body["routes"][0]["waiting"] == 0
        # without limits the route drops out once nothing is held
        await reset_policy(js, "echo.run.0")
        await poll(http, lambda b: b["routes"] == [])


async def test_flow_query_is_validated(http):
    r = await http.get("/api/flow?route=nobody.home.0")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "route"]
    assert (await http.get("/api/flow?route=x")).status_code == 422
    assert (await http.get("/api/flow?nope=1")).status_code == 422
