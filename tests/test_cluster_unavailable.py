"""Submissions while the bus is away (a host cut off, a leader being elected) get ``503
bus.unavailable`` with ``Retry-After``, never ``500 internal.error``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from cogo.config import Config
from cogo.errors import BusUnavailable
from cogo.http.app import create_app
from cogo.http.state import AppState
from cogo.http.tasks import on_bus
from cogo.streams.envelope import MSG_ID
from cogo.streams.policies import PolicyStore
from cogo.streams.publisher import Publisher
from cogo.streams.server import EmbeddedServer
from tests.helpers import wait_until

TOKEN = "test-token"


@pytest.fixture
async def http(nc: NATS, js: JetStreamContext, config: Config, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    policies = PolicyStore(js)
    await policies.start()

    # the built-in routes were declared just before (the js fixture): seen by the watch
    async def declared() -> bool:
        return "echo.run.0" in policies.routes()

    await wait_until(declared, 30, "echo.run.0 never declared")
    state = AppState(nc=nc, config=config, policies=policies, data_dir=data_dir, api_token=TOKEN)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://cogo", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client
    await policies.stop()


async def test_a_submission_while_the_server_is_gone_is_503_with_retry_after(
    http: httpx.AsyncClient, nats_server: EmbeddedServer
) -> None:
    ok = await http.post("/api/tasks", json={"route": "echo.run.0"})
    assert ok.status_code == 202, ok.text
    nats_server.kill()
    try:
        r = await http.post("/api/tasks", json={"route": "echo.run.0"})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "bus.unavailable"
        assert int(r.headers["retry-after"]) > 0
    finally:  # back on its port: the client reconnects, and the fixtures close cleanly
        nats_server.start()
        await nats_server.wait_ready()

    # the facade's connection comes back on its own; until it has, the answer is the same
    # 503 with Retry-After (a loaded machine can take a few pings), never a 500
    async def accepted() -> bool:
        again = await http.post("/api/tasks", json={"route": "echo.run.0"})
        assert again.status_code in (202, 503), again.text
        return again.status_code == 202

    await wait_until(accepted, 30, "the facade never accepted a task again")


async def test_a_request_cancelled_under_it_is_the_bus_not_an_internal_error() -> None:
    # what a reset connection does to a request in flight: its future is cancelled, and the
    # handler awaiting it sees CancelledError though nobody cancelled the handler
    reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, reply.cancel)
    with pytest.raises(BusUnavailable, match="reset"):
        await on_bus(reply)


async def test_any_endpoint_answers_a_request_cancelled_under_it_with_503(
    nc: NATS, config: Config, data_dir: Path
) -> None:
    from starlette.routing import Route

    from cogo.http.endpoint import endpoint

    @endpoint()
    async def reset(request: Any) -> Any:
        # what a bus request whose connection is reset does to the handler awaiting it
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, reply.cancel)
        return await reply

    state = AppState(nc=nc, config=config, policies=None, data_dir=data_dir, api_token=TOKEN)  # type: ignore[arg-type]
    app = create_app(state, extra_routes=[Route("/api/reset", reset, methods=["GET"])])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://cogo",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        r = await client.get("/api/reset")
    assert r.status_code == 503 and r.json()["code"] == "bus.unavailable", r.text
    assert r.headers["retry-after"]


async def test_cancelling_the_handler_itself_still_cancels_it() -> None:
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    handler = asyncio.create_task(on_bus(never))
    await asyncio.sleep(0.01)
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler


async def test_a_publish_nobody_stores_is_resent_only_if_a_resend_is_harmless(nc: NATS) -> None:
    # a subscriber that never answers: what a publish meets when its stream's leader just
    # stepped down (the request is taken, the ack never comes)
    seen: list[str] = []

    async def swallow(msg: Msg) -> None:
        seen.append((msg.headers or {}).get(MSG_ID, ""))

    sub = await nc.subscribe("nowhere.at.all", cb=swallow)
    publisher = Publisher(nc)
    await publisher.start()
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await publisher.publish_all([("nowhere.at.all", b"{}", {MSG_ID: "m-1"})], timeout=5)
        assert seen.count("m-1") >= 2  # resent: the stream would store it once
        expecting = {MSG_ID: "m-2", "Nats-Expected-Last-Sequence": "7"}
        with pytest.raises(nats.errors.TimeoutError):
            await publisher.publish_all([("nowhere.at.all", b"{}", expecting)], timeout=5)
        await nc.flush()
        assert seen.count("m-2") == 1  # a resend could fail where the first copy landed
    finally:
        await publisher.stop()
        await sub.unsubscribe()
