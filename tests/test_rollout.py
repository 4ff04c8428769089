"""Rollouts against a real ``cogo up`` and a versioned ``cogo run echo --version v2``.

A good candidate goes through Dev E2E, CI smoke, canary and promote; a candidate that
fails under sustained traffic is rolled back at the canary stage; the canary share holds
at 10% over 1,000 tasks.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from cogo.agents.echo import EchoActor
from cogo.config import Backoff
from cogo.rollouts.canary import BASELINE, CANARY, choose, share_bucket
from cogo.rollouts.gates import Figures, evaluate, wilson
from cogo.rollouts.split import RouteSplit
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.connection import connect
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    MSG_ID,
    PRINCIPAL_HEADER,
    ResolvedAssignment,
    WorkOrder,
    encoder,
    new_id,
)
from tests.helpers import EventReader, running, submit, submit_many
from tests.upsystem import cogo, cogo_up, stop, up_with_candidate

ROUTE = "echo.run.0"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def drive_until_final(http: httpx.AsyncClient, js: Any, rollout_id: str, timeout: float = 50.0) -> dict[str, Any]:
    """Keep real traffic flowing (25 tasks every 0.25 s) until the rollout is over."""
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        rollout = (await http.get(f"/api/rollouts/{rollout_id}")).json()
        if rollout["status"] in ("promoted", "rolled_back"):
            return rollout
        if rollout["stage"] in ("canary", "promote"):
            await submit_many(js, [f"traffic-{rollout_id}-{sent + i}" for i in range(25)])
            sent += 25
        await asyncio.sleep(0.25)
    raise AssertionError(f"rollout not over in {timeout}s: {rollout}")


async def dispatcher_sees_split(js: Any, timeout: float = 15.0) -> None:
    """Wait until a task in the canary's hash range really goes to the candidate."""
    reader = EventReader(js)
    deadline = time.monotonic() + timeout
    for n in range(10_000):
        probe = f"probe-{n}"
        if share_bucket(probe) >= 10:
            continue
        await submit_many(js, [probe])
        if (await reader.wait_terminal([probe]))[probe].cohort == CANARY:
            return
        assert time.monotonic() < deadline, "the dispatcher never applied the split"
        await asyncio.sleep(0.1)


def rollout_events(reader: EventReader, rollout_id: str) -> list[Any]:
    return [
        e for e in reader.events if e.type.startswith("rollout_") and (e.data or {}).get("rollout_id") == rollout_id
    ]


async def test_good_candidate_goes_through_every_stage_to_100(tmp_path, config_path):
    async with up_with_candidate(tmp_path / "up", config_path) as (http, js, _):
        started = await http.post(
            "/api/rollouts",
            json={
                "route": ROUTE,
                "candidate": "v2",
                "slo": {"p90_ms": 5000},
                "min_samples": 15,
                "dev_e2e_tasks": 3,
                "smoke_tasks": 10,
                "stage_timeout_s": 30,
                "sample_payload": {"result": "sample"},
            },
        )
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]
        conflict = await http.post("/api/rollouts", json={"route": ROUTE, "candidate": "v3"})
        assert conflict.status_code == 409

        rollout = await drive_until_final(http, js, rollout_id)
        assert rollout["status"] == "promoted", rollout
        assert [s["name"] for s in rollout["stages"]] == ["dev_e2e", "smoke", "canary", "promote"]
        assert all(s["status"] == "passed" for s in rollout["stages"]), rollout["stages"]
        canary = rollout["stages"][2]
        assert canary["percent"] == 10 and canary["samples"]["candidate"]["finished"] >= 15
        assert canary["samples"]["baseline"]["finished"] > canary["samples"]["candidate"]["finished"]
        gate_names = {g["name"] for g in canary["gates"]}
        assert gate_names == {"samples", "failure_rate", "latency_p90", "decision_quality"}

        # promoted: v2 is now the baseline and takes every task
        await submit_many(js, ["after-promote"])
        reader = EventReader(js)
        done = (await reader.wait_terminal(["after-promote"]))["after-promote"]
        assert done.type == "execute_done"
        assert done.version == "v2" and done.cohort == BASELINE
        listed = (await http.get("/api/rollouts")).json()["rollouts"]
        assert [r["id"] for r in listed] == [rollout_id]
        await reader.poll()

    types = [e.type for e in rollout_events(reader, rollout_id)]
    assert types[0] == "rollout_started" and types[-1] == "rollout_promoted"
    assert types.count("rollout_stage_changed") == 4
    assert types.count("rollout_gate_evaluated") == 16
    pinned = [
        e
        for e in reader.events
        if e.type == "execute_done" and (e.correlation_id or "").startswith(f"rollout-{rollout_id}-")
    ]
    assert {(e.cohort, e.version) for e in pinned} == {(CANARY, "v2"), (BASELINE, None)}


async def test_failing_candidate_is_rolled_back_at_canary(tmp_path, config_path):
    # the candidate passes its 13 sample tasks, then fails half of the real traffic
    env = {"COGO_ECHO_FAIL_RATE": "0.5", "COGO_ECHO_FAIL_AFTER": "13"}
    async with up_with_candidate(tmp_path / "up", config_path, env) as (http, js, _):
        started = await http.post(
            "/api/rollouts",
            json={
                "route": ROUTE,
                "candidate": "v2",
                "min_samples": 30,
                "dev_e2e_tasks": 3,
                "smoke_tasks": 10,
                "stage_timeout_s": 30,
            },
        )
        assert started.status_code == 201, started.text
        rollout_id = started.json()["id"]
        rollout = await drive_until_final(http, js, rollout_id)
        assert rollout["status"] == "rolled_back", rollout
        assert rollout["stage"] == "canary" and rollout["percent"] == 0
        assert "failure_rate" in rollout["reason"]
        assert [s["status"] for s in rollout["stages"]] == ["passed", "passed", "failed"]
        canary = rollout["stages"][2]
        failure = next(g for g in canary["gates"] if g["name"] == "failure_rate")
        # stopped early on >= 10 samples: how many of them failed is chance (the fail rate is a
        # hash of random task ids), that the gate saw them fail above the baseline is not
        assert not failure["passed"] and failure["candidate"] > 0 and failure["baseline"] == 0

        # rolled back: new tasks all run on the baseline again
        ids = [f"after-rollback-{i}" for i in range(30)]
        await submit_many(js, ids)
        reader = EventReader(js)
        done = await reader.wait_terminal(ids)
        assert all(e.type == "execute_done" and e.cohort == BASELINE for e in done.values())
        await reader.poll()
        types = [e.type for e in rollout_events(reader, rollout_id)]
        assert types[-1] == "rollout_rolled_back"
        failed_gates = [
            e for e in rollout_events(reader, rollout_id) if e.type == "rollout_gate_evaluated" and not e.data["passed"]
        ]
        assert failed_gates and all(e.data["stage"] == "canary" for e in failed_gates)


async def test_canary_share_is_ten_percent_over_1000_tasks(tmp_path, config_path):
    async with up_with_candidate(tmp_path / "up", config_path) as (http, js, _):
        started = await http.post(
            "/api/rollouts",
            json={
                "route": ROUTE,
                "candidate": "v2",
                "min_samples": 100_000,
                "dev_e2e_tasks": 0,
                "smoke_tasks": 0,
                "stage_timeout_s": 3600,
            },
        )
        rollout_id = started.json()["id"]
        deadline = time.monotonic() + 20
        while (await http.get(f"/api/rollouts/{rollout_id}")).json()["stage"] != "canary":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await dispatcher_sees_split(js)
        ids = [f"share-{i}" for i in range(1000)]
        await submit_many(js, ids)
        reader = EventReader(js)
        done = await reader.wait_terminal(ids, timeout=45)
        canary = [e for e in done.values() if e.cohort == CANARY]
        assert all(e.version == "v2" for e in canary)
        assert all(e.cohort == BASELINE and e.version is None for e in done.values() if e.cohort != CANARY)
        assert 70 <= len(canary) <= 130, len(canary)

        paused = await http.post(f"/api/rollouts/{rollout_id}/pause")
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        rolled = await http.post(f"/api/rollouts/{rollout_id}/rollback", json={"reason": "drill"})
        assert rolled.json()["status"] == "rolled_back" and rolled.json()["reason"] == "drill"
        assert (await http.post(f"/api/rollouts/{rollout_id}/promote")).status_code == 409
        assert (await http.get("/api/rollouts/nope")).status_code == 404
        bad = await http.post("/api/rollouts", json={"route": "nope.x.0", "candidate": "v 2"})
        assert bad.status_code == 422
        assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("body", "candidate")}


def test_split_is_deterministic_and_pins_win():
    assignment = ResolvedAssignment(
        model="m",
        max_tokens=1,
        max_cost_usd=1.0,
        timeout_ms=1,
        ttl_ms=1,
        max_attempts=1,
        backoff=Backoff(initial_ms=1, multiplier=1.0, max_ms=1),
    )

    def order(task_id: str, payload: dict[str, Any] | None = None) -> WorkOrder:
        return WorkOrder(
            task_id=task_id,
            route=ROUTE,
            attempt=1,
            payload=payload or {},
            assignment=assignment,
            submitted_at=0,
            deadline=1,
            correlation_id="c",
        )

    split = RouteSplit(route=ROUTE, candidate="v2", percent=10)
    buckets = [share_bucket(f"t{i}") for i in range(10_000)]
    assert 900 <= sum(b < 10 for b in buckets) <= 1100
    chosen = [choose(order(f"t{i}"), split) for i in range(200)]
    assert [o.cohort == CANARY for o in chosen] == [b < 10 for b in buckets[:200]]
    assert choose(order("x", {"__cohort": "canary"}), split).version == "v2"
    assert (
        choose(order("x", {"__cohort": "baseline"}), split.__class__(route=ROUTE, candidate="v2", percent=100)).cohort
        == BASELINE
    )
    assert choose(order("x"), None).cohort == BASELINE


def test_gates_tolerate_noise_but_not_regressions():
    assert wilson(0, 0) == (0.0, 1.0)
    clean = Figures(finished=200, failures=0, accepted=200, p90_ms=50)
    one_off = Figures(finished=20, failures=1, accepted=19, p90_ms=60)
    broken = Figures(finished=40, failures=20, accepted=20, p90_ms=60)
    slow = Figures(finished=40, failures=0, accepted=40, p90_ms=900)
    verdict = {g.name: g.passed for g in evaluate(one_off, clean, min_samples=20, slo_p90_ms=500)}
    assert verdict == {"samples": True, "failure_rate": True, "latency_p90": True, "decision_quality": True}
    verdict = {g.name: g.passed for g in evaluate(broken, clean, min_samples=20, slo_p90_ms=500)}
    assert not verdict["failure_rate"] and not verdict["decision_quality"]
    verdict = {g.name: g.passed for g in evaluate(slow, clean, min_samples=50, slo_p90_ms=500)}
    assert not verdict["latency_p90"] and not verdict["samples"] and verdict["failure_rate"]


async def test_dev_e2e_runs_codebuildtest_on_the_candidate(tmp_path, config_path):
    """For a code route, Dev E2E is the sample codeBuildTest run, pinned to the candidate."""
    repo = tmp_path / "sample-repo"
    shutil.copytree(EXAMPLES / "sample-repo", repo)

    def params(name: str) -> dict[str, Any]:
        return {**json.loads((EXAMPLES / name).read_text()), "repo": str(repo)}

    proc, info = await cogo_up(tmp_path / "up", config_path)
    worker = cogo(
        "run",
        "build_test",
        "--version",
        "v2",
        "--nats-url",
        info["nats_url"],
        "--config",
        str(config_path),
        "--data-dir",
        str(tmp_path / "up"),
    )
    nc = await connect(info["nats_url"], "test")
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    try:
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=20) as http:
            unknown = await http.post(
                "/api/rollouts",
                json={"route": "code.build-test.0", "candidate": "v2", "dev_e2e_workflow": {"workflowId": "nope"}},
            )
            assert unknown.status_code == 422
            assert unknown.json()["detail"][0]["loc"][-1] == "workflowId"

            async def rollout(name: str) -> dict[str, Any]:
                started = await http.post(
                    "/api/rollouts",
                    json={
                        "route": "code.build-test.0",
                        "candidate": "v2",
                        "smoke_tasks": 0,
                        "min_samples": 1000,
                        "stage_timeout_s": 40,
                        "dev_e2e_workflow": {"workflowId": "codeBuildTest", "parameters": params(name)},
                    },
                )
                assert started.status_code == 201, started.text
                rollout_id = started.json()["id"]
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline:
                    body = (await http.get(f"/api/rollouts/{rollout_id}")).json()
                    if body["status"] != "running" or body["stage"] == "canary":
                        return body
                    await asyncio.sleep(0.3)
                raise AssertionError(f"rollout stuck: {body}")

            bad = await rollout("bad-fix.json")
            assert bad["status"] == "rolled_back" and bad["stage"] == "dev_e2e", bad
            assert "sample_workflow" in bad["reason"]

            good = await rollout("fix.json")
            assert good["status"] == "running" and good["stage"] == "canary", good
            dev = good["stages"][0]
            assert dev["status"] == "passed"
            assert dev["gates"][0]["name"] == "sample_workflow" and dev["gates"][0]["passed"]
            assert dev["samples"]["candidate"]["finished"] == 1
            rolled = await http.post(f"/api/rollouts/{good['id']}/rollback")
            assert rolled.json()["status"] == "rolled_back"

        reader = EventReader(nc.jetstream())
        await reader.poll()
        builds = [e for e in reader.events if e.type == "execute_done" and e.route == "code.build-test.0"]
        assert builds and all(e.version == "v2" and e.cohort == CANARY for e in builds)
    finally:
        await nc.close()
        await asyncio.to_thread(stop, worker)
        await asyncio.to_thread(stop, proc)


async def test_used_bypass_is_a_grant_and_is_audited(nats_server, js, config):
    # a submitter named in [policy] bypass_principals may lift ceilings (without --auth
    # there is no seal key, and the principal header is taken as it is)
    policy = msgspec.structs.replace(config.policy, bypass_principals=["ops"])
    config = msgspec.structs.replace(config, policy=policy)
    ask = {"__assignment": {"model": "gpt-9", "bypass": ["model", "max_tokens"]}}
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        bypassed = new_id()
        body = {"task_id": bypassed, "route": ROUTE, "payload": ask}
        await js.publish(EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: bypassed, PRINCIPAL_HEADER: "ops"})
        unused = await submit(js, payload={"__assignment": {"bypass": ["model"]}})
        refused = await submit(js, payload={"__assignment": {"model": "gpt-9"}})
        denied = await submit(js, payload=ask)  # nobody granted it
        reader = EventReader(js)
        done = await reader.wait_terminal([bypassed, unused, refused, denied])
        await asyncio.sleep(0.2)
        await reader.poll()
    assert done[bypassed].type == done[unused].type == "execute_done"
    assert done[refused].error_code == "policy.model_not_allowed"
    assert done[denied].error_code == "policy.bypass_denied"
    audits = [e for e in reader.events if e.type == "policy_bypassed"]
    assert [(e.task_id, e.data["bypassed"]) for e in audits] == [(bypassed, ["model"])]
    assert audits[0].cohort == BASELINE and audits[0].route == ROUTE
    assert audits[0].data["granted_by"] == "principal" and audits[0].data["principal"] == "ops"
