"""Artifacts: object store + local mirror + ``artifact_stored`` event, and the HTTP route."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from cogo.config import Backoff
from cogo.errors import ArtifactKeyInvalid, ArtifactNotFound
from cogo.http import artifacts as artifact_routes
from cogo.http.app import create_app
from cogo.http.state import AppState
from cogo.streams.artifacts import ArtifactStore, artifact_key
from cogo.streams.catalogue import ARTIFACT_STORED
from cogo.streams.envelope import ResolvedAssignment, WorkOrder
from cogo.streams.policies import PolicyStore
from tests.helpers import EventReader


def order(task_id: str = "task-1", correlation_id: str = "run-7") -> WorkOrder:
    assignment = ResolvedAssignment(
        model="local",
        max_tokens=1,
        max_cost_usd=0.0,
        timeout_ms=1000,
        ttl_ms=1000,
        max_attempts=1,
        backoff=Backoff(),
    )
    now = time.time()
    return WorkOrder(
        task_id=task_id,
        route="code.build-test.0",
        attempt=1,
        payload={},
        assignment=assignment,
        submitted_at=now,
        deadline=now + 60,
        correlation_id=correlation_id,
    )


@pytest.mark.parametrize(
    ("task_id", "path"),
    [
        ("..", "x"),
        ("t", "../x"),
        ("t", "a/../../x"),
        ("t", "/etc/passwd"),
        ("a/b", "x"),
        ("t", ""),
        ("", "x"),
        ("t", "a//b"),
        ("t", "./x"),
        ("t", "a\\b"),
    ],
)
def test_unsafe_keys_are_rejected(task_id: str, path: str) -> None:
    with pytest.raises(ArtifactKeyInvalid):
        artifact_key(task_id, path)


async def test_put_stores_mirrors_and_records(js, data_dir: Path) -> None:
    store = ArtifactStore(js, data_dir)
    data = b'{"verdict": "pass"}'
    ref = await store.put(order(), "build-test/report.json", data, actor="test")
    assert ref.name == "task-1/build-test/report.json"
    assert ref.size == len(data) and ref.sha256 == hashlib.sha256(data).hexdigest()
    assert await ArtifactStore(js).get(ref.name) == data  # any reader, no data dir needed
    assert (data_dir / "artifacts/task-1/build-test/report.json").read_bytes() == data
    reader = EventReader(js, f"events.{ARTIFACT_STORED}.>")
    (event,) = await reader.poll()
    assert event.type == ARTIFACT_STORED and event.task_id == "task-1"
    assert event.correlation_id == "run-7" and event.route == "code.build-test.0"
    assert event.data == {"name": ref.name, "size": ref.size, "sha256": ref.sha256}
    # an empty artifact is still an artifact
    await store.put(order("task-2"), "empty.txt", b"")
    assert await store.get("task-2/empty.txt") == b""
    with pytest.raises(ArtifactNotFound):
        await store.get("task-1/nope.json")


async def test_http_serves_artifacts(nc, js, config, data_dir: Path) -> None:
    store = ArtifactStore(js, data_dir)
    await store.put(order(), "build-test/report.json", b'{"verdict": "fail"}')
    await store.put(order(), "logs/test.log", b"1 failed\n")
    await store.put(order(), "blob.bin", b"\x00\x01")
    state = AppState(nc=nc, config=config, policies=PolicyStore(js), data_dir=data_dir)
    app = create_app(state, extra_routes=artifact_routes.routes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cogo") as client:
        report = await client.get("/api/artifacts/task-1/build-test/report.json")
        assert report.status_code == 200
        assert report.headers["content-type"] == "application/json; charset=utf-8"
        assert report.json() == {"verdict": "fail"}
        log = await client.get("/api/artifacts/task-1/logs/test.log")
        assert log.headers["content-type"] == "text/plain; charset=utf-8"
        assert log.text == "1 failed\n"
        blob = await client.get("/api/artifacts/task-1/blob.bin")
        assert blob.headers["content-type"] == "application/octet-stream"
        assert blob.content == b"\x00\x01"
        missing = await client.get("/api/artifacts/task-1/nope.json")
        assert missing.status_code == 404
        assert "nope.json" in missing.json()["detail"]
        for url in (
            "/api/artifacts/task-1/%2e%2e/task-2/secret",
            "/api/artifacts/%2e%2e/etc/passwd",
            "/api/artifacts/task-1/a/%2e%2e/%2e%2e/x",
        ):
            bad = await client.get(url)
            assert bad.status_code == 400, url
            assert "'..'" in bad.json()["detail"]
