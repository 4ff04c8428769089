from cogo.agents.echo import EchoActor
from cogo.runtime.dispatcher import ExecutorDispatcher
from tests.helpers import EventReader, running, submit


async def test_echo_round_trip(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        task_id = await submit(js, payload={"result": {"x": 1}})
        reader = EventReader(js)
        done = await reader.wait_terminal([task_id], timeout=10)
    event = done[task_id]
    assert event.type == "execute_done"
    assert event.data["result"] == {"x": 1}
    assert [e.type for e in reader.of(task_id)] == ["execute_enqueued", "execute_done"]
