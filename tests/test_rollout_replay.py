"""A replay never decides a rollout: the audit's 30 ``POST /api/projections/replay`` calls
rolled back waiting rollouts ("the projection is closed or being swapped by a replay")."""

from __future__ import annotations

import asyncio
import json

from tests.upsystem import up_with_candidate

ROUTE = "echo.run.0"


async def test_replays_never_roll_a_waiting_rollout_back(tmp_path, config_path):
    async with up_with_candidate(tmp_path / "up", config_path) as (http, _js, _):
        started = await http.post(
            "/api/rollouts",
            json={
                "route": ROUTE,
                "candidate": "v2",
                "dev_e2e_tasks": 1,
                "smoke_tasks": 1,
                "min_samples": 100_000,
                "stage_timeout_s": 600,  # the canary waits for traffic
                "sample_payload": {"result": "sample"},
            },
        )
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]

        async def rollout() -> dict:
            return (await http.get(f"/api/rollouts/{rollout_id}")).json()

        while (await rollout())["stage"] != "canary":
            assert (await rollout())["status"] == "running", await rollout()
            await asyncio.sleep(0.2)
        done = 0
        for _ in range(30):
            async with http.stream("POST", "/api/projections/replay") as response:
                lines = [json.loads(line) async for line in response.aiter_lines() if line]
            assert response.status_code == 200 and lines[-1].get("done"), lines
            done += 1
            current = await rollout()
            assert current["status"] == "running", (done, current)
        current = await rollout()
        assert current["status"] == "running" and current["stage"] == "canary", current
