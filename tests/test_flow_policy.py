"""Flow policies and the ``key`` / ``priority`` of an assignment: bad ones refused, by field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cogo
from cogo.agents.echo import EchoActor
from cogo.config import FlowPolicy, load_config
from cogo.errors import ConfigError
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.policies import read_policy, set_policy
from cogo.streams.registry import declare
from tests.helpers import SUITE_CONFIG, EventReader, facade, running, submit

BAD_FLOWS = [
    ({"concurrency": -1}, "flow.concurrency=-1"),
    ({"concurrency_per_key": 0}, "flow.concurrency_per_key=0"),
    ({"concurrency": 10**9}, "flow.concurrency=1000000000"),
    ({"rate_per_key_s": 0}, "flow.rate_per_key_s=0"),
    ({"rate_per_key_s": -2.5}, "flow.rate_per_key_s=-2.5"),
    ({"rate_per_key_s": 1e12}, "flow.rate_per_key_s=1000000000000.0"),
    ({"rate_per_key_s": 1.0, "burst": 0}, "flow.burst=0"),
    ({"burst": 5}, "flow.burst needs flow.rate_per_key_s"),
    ({"concurrency": "5"}, "$.flow.concurrency"),
    ({"concurrency": True}, "$.flow.concurrency"),
    ({"limit": 3}, "limit"),
]


def _toml(flow: dict) -> str:
    def value(v: object) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    inner = ", ".join(f"{k} = {value(v)}" for k, v in flow.items())
    return f'\n[policy.routes."echo.run.0".flow]\n{inner.replace(", ", chr(10))}\n'


@pytest.mark.parametrize(("flow", "field"), BAD_FLOWS)
def test_config_refuses_bad_flow_limits_naming_the_field(tmp_path: Path, flow, field):
    path = tmp_path / "cogo.toml"
    path.write_text(SUITE_CONFIG + _toml(flow))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert field in str(caught.value)


def test_config_infinite_rate_is_refused(tmp_path: Path):
    path = tmp_path / "cogo.toml"
    path.write_text(SUITE_CONFIG + _toml({"rate_per_key_s": "inf"}).replace('"inf"', "inf"))
    with pytest.raises(ConfigError, match="flow.rate_per_key_s=inf"):
        load_config(path)


def test_config_takes_a_good_flow_policy(tmp_path: Path):
    path = tmp_path / "cogo.toml"
    path.write_text(SUITE_CONFIG + _toml({"concurrency": 8, "rate_per_key_s": 2.5}))
    flow = load_config(path).route_policy("echo.run.0").flow
    assert flow == FlowPolicy(concurrency=8, rate_per_key_s=2.5)
    assert flow.enabled and flow.bucket == 3  # burst defaults to ceil(rate)


@pytest.mark.parametrize(("flow", "field"), BAD_FLOWS)
async def test_policy_set_refuses_bad_flow_limits(js, flow, field):
    with pytest.raises(ConfigError) as caught:
        await set_policy(js, "echo.run.0", {"flow": flow})
    assert field in str(caught.value)
    assert not (await read_policy(js, "echo.run.0")).flow.enabled  # nothing was stored


def test_cli_policy_set_refuses_and_says_which_field(nats_server, js):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cogo",
            "policy",
            "set",
            "echo.run.0",
            '{"flow": {"concurrency_per_key": -3}}',
            "--nats-url",
            nats_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "config.invalid" in proc.stderr and "flow.concurrency_per_key=-3" in proc.stderr


async def test_agent_declared_flow_policy_and_its_checks(js, config):
    app = cogo.App("flowing")
    with pytest.raises(ConfigError, match="flow.concurrency=0"):
        app.agent("flowing.bad.0", policy={"flow": {"concurrency": 0}})(handler)
    app.agent("flowing.work.0", policy={"flow": {"concurrency_per_key": 2}})(handler)
    await declare(js, config, app.declarations())
    assert (await read_policy(js, "flowing.work.0")).flow == FlowPolicy(concurrency_per_key=2)
    # `cogo policy set` goes over it, and a nested null removes one limit
    await set_policy(js, "flowing.work.0", {"flow": {"concurrency": 5}})
    assert (await read_policy(js, "flowing.work.0")).flow == FlowPolicy(5, 2)
    await set_policy(js, "flowing.work.0", {"flow": {"concurrency_per_key": None}})
    assert (await read_policy(js, "flowing.work.0")).flow == FlowPolicy(concurrency=5)


async def handler(ctx: cogo.TaskContext, payload: dict) -> dict:
    return payload


BAD_ASSIGNMENTS = [
    ({"key": 42}, "$.payload.__assignment.key"),
    ({"key": ""}, "$.payload.__assignment.key"),
    ({"key": "x" * 257}, "$.payload.__assignment.key"),
    ({"key": ["a"]}, "$.payload.__assignment.key"),
    ({"priority": 10}, "$.payload.__assignment.priority"),
    ({"priority": -1}, "$.payload.__assignment.priority"),
    ({"priority": 2.5}, "$.payload.__assignment.priority"),
    ({"priority": "high"}, "$.payload.__assignment.priority"),
]


async def test_bad_key_or_priority_fails_the_task_naming_the_field(nats_server, js, config):
    await set_policy(js, "echo.run.0", {"flow": {"concurrency_per_key": 1}})
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        ids = {await submit(js, payload={"__assignment": a}): field for a, field in BAD_ASSIGNMENTS}
        good = await submit(js, payload={"__assignment": {"key": "ü" * 256, "priority": 9.0}})
        reader = EventReader(js)
        got = await reader.wait_terminal([*ids, good])
    for tid, field in ids.items():
        assert got[tid].error_code == "assignment.invalid", got[tid]
        assert field in got[tid].error and got[tid].data["detail"]
        assert [e.type for e in reader.of(tid)] == ["execute_failed"]  # never held, never run
    assert got[good].type == "execute_done"
    (enqueued,) = [e for e in reader.of(good) if e.type == "execute_enqueued"]
    assert enqueued.data["assignment"]["key"] == "ü" * 256
    assert enqueued.data["assignment"]["priority"] == 9


async def test_http_refuses_bad_key_with_its_location(nc, js, config, data_dir):
    async with facade(nc, config, data_dir) as http:
        for assignment, field in BAD_ASSIGNMENTS:
            body = {"route": "echo.run.0", "payload": {"__assignment": assignment}}
            r = await http.post("/api/tasks", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["code"] == "assignment.invalid"
            loc = ["body", *field.removeprefix("$.").split(".")]
            assert r.json()["detail"][0]["loc"] == loc
