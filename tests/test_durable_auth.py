"""Durable agents under ``cogo up --auth``: an app's agents on their own user call children,
suspend, are signalled and cancelled, with no permission violation anywhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import cogo
from tests.helpers import wait_until
from tests.upsystem import cogo_up, stop

ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.mark.timeout(300)
async def test_durable_agents_under_auth(tmp_path, config_path):
    data_dir = tmp_path / "secure"
    config = tmp_path / "durable.toml"
    config.write_text(config_path.read_text() + "\n[runtime]\nsuspend_after_ms = 50\n")
    proc, info = await cogo_up(data_dir, config, "--auth", "--app", "tests.durable_apps:app", "--app-dir", ROOT)
    try:
        async with cogo.Client(info["nats_url"], user="client", password=info["nats_password"]) as client:
            parent = await client.submit("dur.parent.0", {"topics": ["a", "b"]})
            assert [n["topic"] for n in (await parent.result(timeout=60))["notes"]] == ["a", "b"]
            waiting = await client.submit("dur.signal.0", {})

            async def suspended() -> bool:
                try:
                    return (await client.status(waiting.task_id)).status == "suspended"
                except cogo.errors.TaskNotFound:
                    return False

            await wait_until(suspended, 60, "never suspended")
            await client.signal(waiting.task_id, "go", "yes")
            assert await waiting.result(timeout=60) == {"got": "yes"}
            slept = await client.submit("dur.sleep.0", {"s": 1.0})
            assert await slept.result(timeout=60) == {"slept": 1.0}
            tree = await client.submit("dur.tree.0", {})
            await asyncio.sleep(1.0)
            await client.cancel(tree.task_id)
            assert (await tree.wait(timeout=60)).status == "cancelled"
            for key in ("x", "y", "slow"):
                child = client.handle(f"{tree.task_id}/{key}", None)
                assert (await child.wait(timeout=60)).status == "cancelled"
    finally:
        await asyncio.to_thread(stop, proc)
    logs = "".join(p.read_text() for p in (data_dir / "logs").glob("*.log"))
    logs += (data_dir / "up.log").read_text()
    assert "violation" not in logs.lower(), [line for line in logs.splitlines() if "violation" in line.lower()]
