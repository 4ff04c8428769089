"""``cogo.runtime.startup.Startup``: the one start-up ``cogo up``, ``cogo.testing`` and the bench share."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogo import Client
from cogo.config import load_config
from cogo.runtime.components import components
from cogo.runtime.startup import Startup
from cogo.streams.server import EmbeddedServer
from tests import sample_apps

ROOT = str(Path(__file__).resolve().parents[1])


async def test_agents_run_here_and_as_processes_and_stop_with_the_bus(tmp_path: Path) -> None:
    boot = Startup(tmp_path, load_config(), sync="default", name="boot-test")
    try:
        await boot.start_bus()
        await boot.declare([sample_apps.app])
        await boot.run_agent(components.get("dispatcher"))
        await boot.run_agent(sample_apps.app.agents["flaky"])
        child = boot.spawn("tests.sample_apps:app", "greet", import_roots=[ROOT])
        async with Client(boot.url, name="boot-test-client") as client:
            greeted = await client.submit("sample.greet.0", {"name": "a"})
            flaky = await client.submit("sample.flaky.0", {"fail_times": 1})
            assert (await greeted.result(timeout=60))["pid"] == child.pid  # in its process
            assert await flaky.result(timeout=60) == {"attempt": 2}  # retried, in this one
        assert (tmp_path / "logs" / "greet.log").exists()
    finally:
        await boot.stop()
    server = boot.server
    assert isinstance(server, EmbeddedServer) and server.process is not None
    assert child.returncode is not None and server.process.returncode is not None
    assert server.lock is None  # the store is free for the next start


async def test_joining_a_running_bus_leaves_its_server_up(tmp_path: Path) -> None:
    config = load_config()
    async with Startup(tmp_path / "first", config, sync="default") as first:
        await first.start_bus()
        joined = Startup(tmp_path / "second", config, nats_url=first.url, name="joined")
        await joined.start_bus()
        await joined.declare()
        policies = await joined.start_policies()
        assert policies is joined.policies
        await joined.stop()
        assert joined.server is None
        server = first.server
        assert isinstance(server, EmbeddedServer) and server.process is not None
        assert server.process.poll() is None  # not ours to stop
        await first.admin.flush(timeout=5)  # the first one's connection still works


def test_every_runtime_component_and_shipped_agent_has_a_class_to_run() -> None:
    """``cogo run <name>`` resolves every component (the projector is no actor, it only starts
    and stops) and every agent Cogo ships; a class that is neither is refused by name."""
    from cogo.errors import ConfigError
    from cogo.runtime.loader import builtin
    from cogo.runtime.worker import actor_class, as_actor

    own = builtin().app.agents
    assert {"dispatcher", "orchestrator", "projector", "echo", "codegen"} <= set(own)
    for spec in own.values():
        cls = actor_class(spec)
        assert callable(cls.start) and callable(cls.stop), spec.name
    with pytest.raises(ConfigError, match="neither a cogo.Worker nor an actor"):
        as_actor(dict, "agent 'x'")


def test_a_stream_not_placeable_while_peers_start_is_retried_other_refusals_are_not() -> None:
    """A cluster whose peers are still starting refuses to place a stream (10005); start-up
    retries that as it retries a leader election, and raises any other refusal at once."""
    import nats.js.errors

    from cogo.runtime.startup import _placing

    offline = nats.js.errors.BadRequestError(
        code=400, err_code=10005, description="no suitable peers for placement, peer offline"
    )
    other = nats.js.errors.BadRequestError(code=400, err_code=10058, description="stream name already in use")
    assert _placing(offline) and not _placing(other) and not _placing(TimeoutError())
