"""The HTTP facade's task submission, auth and error shapes (in-process, real NATS)."""

from __future__ import annotations

import pytest

from cogo.agents.echo import EchoActor
from cogo.runtime.dispatcher import ExecutorDispatcher
from tests.helpers import EventReader, facade, running

TOKEN = "test-token-123"


@pytest.fixture
async def http(nc, js, config, data_dir):
    async with facade(nc, config, data_dir, token=TOKEN, max_body_bytes=64 * 1024) as client:
        yield client


async def test_submit_runs_the_task(http, nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor):
        r = await http.post("/api/tasks", json={"route": "echo.run.0", "payload": {"result": 5}})
        assert r.status_code == 202
        tid = r.json()["task_id"]
        done = (await EventReader(js).wait_terminal([tid]))[tid]
    assert done.type == "execute_done" and done.data["result"] == 5


async def test_same_task_id_is_reported_duplicate(http):
    body = {"route": "echo.run.0", "task_id": "t-1"}
    first = await http.post("/api/tasks", json=body)
    second = await http.post("/api/tasks", json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True


async def test_auth_is_required_and_constant(http):
    r = await http.post("/api/tasks", json={"route": "echo.run.0"}, headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await http.post("/api/tasks", json={"route": "echo.run.0"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert (await http.get("/healthz", headers={"Authorization": ""})).status_code == 200


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "route"]),
        ({"route": 5}, ["body", "route"]),
        ({"route": "echo run"}, ["body", "route"]),
        ({"route": "echo.run.0", "payload": []}, ["body", "payload"]),
        ({"route": "echo.run.0", "extra": 1}, ["body", "extra"]),
        ({"route": "echo.run.0", "task_id": "has space"}, ["body", "task_id"]),
        ({"route": "no.such.route"}, ["body", "route"]),
        (
            {"route": "echo.run.0", "payload": {"__assignment": {"max_tokens": "x"}}},
            ["body", "payload", "__assignment", "max_tokens"],
        ),
        (
            {"route": "echo.run.0", "payload": {"__assignment": {"ttl_ms": 0}}},
            ["body", "payload", "__assignment", "ttl_ms"],
        ),
    ],
)
async def test_bad_input_gets_422_with_field_paths(http, body, loc):
    r = await http.post("/api/tasks", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"] == loc
    assert detail[0]["msg"]


async def test_not_json_is_400_and_oversized_is_413(http):
    r = await http.post("/api/tasks", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = await http.post("/api/tasks", content=b"")
    assert r.status_code == 400
    big = {"route": "echo.run.0", "payload": {"blob": "x" * (70 * 1024)}}
    r = await http.post("/api/tasks", json=big)
    assert r.status_code == 413

    async def chunks():  # no content-length: the limit still holds while streaming
        for _ in range(100):
            yield b"x" * 1024

    r = await http.post("/api/tasks", content=chunks())
    assert r.status_code == 413


async def test_unknown_paths_and_methods(http):
    assert (await http.get("/api/nope")).status_code == 404
    r = await http.get("/api/tasks")
    assert r.status_code == 405 and r.json()["detail"]
