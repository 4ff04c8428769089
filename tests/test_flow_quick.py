import asyncio
from cogo.actors.dispatcher import ExecutorDispatcher
from cogo.actors.echo import EchoActor
from cogo.streams.policies import set_policy
from tests.helpers import EventReader, running, submit


async def test_quick(nats_server, js, config):
    await set_policy(js, "echo.run.0", {"flow": {"concurrency_per_key": 1}})
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor) as (d, e):
        ids = [await submit(js, payload={"sleep_ms": 100, "__assignment": {"key": f"k{i%2}"}}) for i in range(6)]
        reader = EventReader(js)
        got = await reader.wait_terminal(ids, timeout=30)
        print(d.counters)
    types = [e.type for e in reader.events]
    print(types)
    assert all(e.type == "execute_done" for e in got.values())
    assert types.count("execute_throttled") == 4
