"""The notifier against a real HTTP server on 127.0.0.1: signatures, retries through the
dispatcher, permanent failures and the host allow-list."""

from __future__ import annotations

import json
import stat
from typing import Any

from cogo.agents.notifier import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NotifierActor,
    host_allowed,
    sign,
    verify,
    webhook_secret,
)
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.streams.server import free_port
from tests.helpers import EventReader, running, submit
from tests.workflow_support import Webhook

SECRET = "s3cret"


async def _notify(js: Any, url: str, **assignment: Any) -> Any:
    payload: dict[str, Any] = {"url": url, "body": {"hello": "world", "n": 1}}
    if assignment:
        payload["__assignment"] = assignment
    task_id = await submit(js, "notify.webhook.0", payload)
    reader = EventReader(js)
    done = await reader.wait_terminal([task_id], timeout=20)
    return done[task_id], reader.of(task_id)


async def test_signed_and_retried_on_500(nats_server, js, config, webhook: Webhook, monkeypatch):
    monkeypatch.setenv("COGO_WEBHOOK_SECRET", SECRET)
    webhook.statuses = [500]
    async with running(nats_server.url, config, ExecutorDispatcher, NotifierActor):
        event, history = await _notify(js, webhook.url)
    assert event.type == "execute_done" and event.attempt == 2
    assert event.data["result"] == {"status_code": 200, "attempt": 2}
    assert [e.type for e in history] == ["execute_enqueued", "execute_retry", "execute_enqueued", "execute_done"]
    assert [r["status"] for r in webhook.requests] == [500, 200]
    for request in webhook.requests:
        headers = request["headers"]
        stamp = headers[TIMESTAMP_HEADER]
        assert headers[SIGNATURE_HEADER] == sign(SECRET.encode(), stamp, request["raw"])
        assert verify(SECRET.encode(), stamp, request["raw"], headers[SIGNATURE_HEADER])
        assert headers[SIGNATURE_HEADER].startswith("sha256=")
        assert headers[DELIVERY_HEADER] == event.task_id  # the same on every retry
        assert int(headers[TIMESTAMP_HEADER]) > 0
        assert json.loads(request["raw"]) == {"hello": "world", "n": 1}


async def test_client_error_is_permanent(nats_server, js, config, webhook, monkeypatch):
    monkeypatch.setenv("COGO_WEBHOOK_SECRET", SECRET)
    webhook.statuses = [404]
    async with running(nats_server.url, config, ExecutorDispatcher, NotifierActor):
        event, _ = await _notify(js, webhook.url)
    assert event.type == "execute_failed" and event.error_code == "worker.permanent"
    assert "404" in (event.error or "")
    assert len(webhook.requests) == 1


async def test_unreachable_is_retried_until_exhausted(nats_server, js, config, monkeypatch):
    monkeypatch.setenv("COGO_WEBHOOK_SECRET", SECRET)
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    async with running(nats_server.url, config, ExecutorDispatcher, NotifierActor):
        event, _ = await _notify(js, url, max_attempts=2, backoff={"initial_ms": 50})
    assert event.type == "execute_failed" and event.error_code == "attempts.exhausted"
    assert event.attempt == 2 and "unreachable" in (event.error or "")


async def test_host_allow_list(nats_server, js, config, webhook, monkeypatch):
    monkeypatch.setenv("COGO_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("COGO_WEBHOOK_ALLOWED_HOSTS", raising=False)
    async with running(nats_server.url, config, ExecutorDispatcher, NotifierActor):
        event, _ = await _notify(js, "http://example.com/hook")
        local_name, _ = await _notify(js, webhook.url.replace("127.0.0.1", "localhost"))
    assert event.type == "execute_failed" and event.error_code == "webhook.host_not_allowed"
    assert local_name.type == "execute_done"
    assert host_allowed("https://hooks.example.com/x", ["*.example.com"])
    assert not host_allowed("https://example.com.evil.net/x", ["*.example.com"])
    assert not host_allowed("http://127.0.0.1.nip.io/x", ["127.0.0.1", "localhost"])


async def test_secret_from_data_dir(nats_server, js, config, data_dir, webhook, monkeypatch):
    monkeypatch.delenv("COGO_WEBHOOK_SECRET", raising=False)
    async with running(nats_server.url, config, ExecutorDispatcher):
        async with running(nats_server.url, config, NotifierActor, data_dir=data_dir):
            event, _ = await _notify(js, webhook.url)
    assert event.type == "execute_done"
    secret_file = data_dir / "webhook_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert not list(data_dir.glob(".webhook_secret.*"))  # no temporary file left behind
    request = webhook.requests[0]
    secret = secret_file.read_text().strip().encode()
    stamp = request["headers"][TIMESTAMP_HEADER]
    assert request["headers"][SIGNATURE_HEADER] == sign(secret, stamp, request["raw"])


def _secrets_in_race(dirs: list[str], barrier: Any, out: Any) -> None:
    from pathlib import Path

    for directory in dirs:
        barrier.wait()
        out.put((directory, webhook_secret(Path(directory))))


def test_concurrent_first_starts_agree_on_one_secret(tmp_path, monkeypatch):
    """Processes that create the secret at the same moment all sign with the same full key."""
    import multiprocessing

    monkeypatch.delenv("COGO_WEBHOOK_SECRET", raising=False)
    ctx = multiprocessing.get_context("spawn")
    processes, rounds = 6, 15
    dirs = [str(tmp_path / f"round{i}") for i in range(rounds)]
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_secrets_in_race, args=(dirs, barrier, out)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    seen: dict[str, set[bytes]] = {}
    for _ in range(processes * rounds):
        directory, secret = out.get(timeout=60)
        seen.setdefault(directory, set()).add(secret)
    for worker in workers:
        worker.join(30)
    assert len(seen) == rounds
    for directory, keys in seen.items():
        (key,) = keys  # one secret per data dir, whoever won
        assert len(key) >= 40
        on_disk = (tmp_path / directory / "webhook_secret").read_bytes().strip()
        assert on_disk == key


def test_the_timestamp_is_signed():
    secret, body = b"k", b'{"a":1}'
    signature = sign(secret, "1700000000", body)
    assert verify(secret, "1700000000", body, signature, now=1700000010)
    assert not verify(secret, "1700000999", body, signature, now=1700000999)  # replayed later
    assert not verify(secret, "1700000000", body + b" ", signature, now=1700000010)
    assert not verify(secret, "1700000000", body, signature, now=1700009999)  # too old
