"""The notifier on ``notify.webhook.0``: POSTs a signed JSON body to a webhook.

Payload: ``{"url": "http://127.0.0.1:9000/hook", "body": {...}}`` (without ``body``, the
rest of the payload is sent). The request carries

- ``X-Cogo-Timestamp``: unix seconds when this attempt was sent;
- ``X-Cogo-Signature: sha256=<hex>``: HMAC-SHA256, keyed with the webhook secret
  (``COGO_WEBHOOK_SECRET``, else ``<data-dir>/webhook_secret``, created 0600 on first use),
  of ``<timestamp>.<raw body>``: the timestamp is signed, so a captured request cannot be
  replayed later with a fresh one; a receiver checks the signature, then that the
  timestamp is recent (``verify`` does both);
- ``X-Cogo-Delivery``: the task id, the same on every retry, so a receiver can drop repeats.

Failures go through the dispatcher's uniform retry: a 5xx, 408, 429, timeout or
connection error raises ``WorkerError`` (retried with backoff); any other 4xx, a redirect
(never followed) or a host outside the allow-list raises a permanent error. The allow-list
is ``COGO_WEBHOOK_ALLOWED_HOSTS`` (comma-separated, ``*.example.com`` patterns; default
``127.0.0.1,localhost``): a webhook cannot be pointed at arbitrary hosts by whoever can
start a workflow.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from cogo.config import WEBHOOK_ALLOWED_HOSTS_ENV, WEBHOOK_SECRET_ENV, env
from cogo.errors import (
    InvalidPayload,
    PermanentWorkerError,
    WebhookHostNotAllowed,
    WorkerError,
)
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.worker import Worker
from cogo.secretfile import read_or_create
from cogo.streams.envelope import ASSIGNMENT_KEY, WorkOrder

DEFAULT_ALLOWED_HOSTS = ("127.0.0.1", "localhost")
SIGNATURE_HEADER = "X-Cogo-Signature"
TIMESTAMP_HEADER = "X-Cogo-Timestamp"
DELIVERY_HEADER = "X-Cogo-Delivery"
SECRET_FILE = "webhook_secret"
RETRYABLE_STATUS = {408, 425, 429}
# how old a timestamp ``verify`` accepts by default (clock skew plus delivery time)
DEFAULT_TOLERANCE_S = 300

_encoder = msgspec.json.Encoder(order="deterministic")


def allowed_hosts_from_env() -> list[str]:
    raw = env(WEBHOOK_ALLOWED_HOSTS_ENV, keep_empty=True)
    if raw is None:
        return list(DEFAULT_ALLOWED_HOSTS)
    return [h.strip().lower() for h in raw.split(",") if h.strip()]


def webhook_secret(data_dir: Path | None) -> bytes | None:
    """``COGO_WEBHOOK_SECRET``, else ``<data-dir>/webhook_secret`` (created once, atomically)."""
    secret = env(WEBHOOK_SECRET_ENV)
    if secret:
        return secret.encode()
    if data_dir is None:
        return None
    return read_or_create(Path(data_dir) / SECRET_FILE).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Cogo-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature over timestamp and body, and a recent timestamp."""
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    return abs((time.time() if now is None else now) - sent) <= tolerance_s


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return bool(host) and any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed)


class NotifierActor(Worker):
    """Delivers webhook notifications, signed, to allowed hosts only."""

    kind = "notifier"
    route = "notify.webhook.0"
    needs_data_dir = True

    def __init__(
        self,
        *args: Any,
        data_dir: Path | None = None,
        allowed_hosts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.data_dir = data_dir
        self.allowed_hosts = (
            [h.lower() for h in allowed_hosts] if allowed_hosts is not None else allowed_hosts_from_env()
        )
        self._secret: bytes | None = None
        self._client: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        self._secret = await asyncio.to_thread(webhook_secret, self.data_dir)
        # no proxies from the environment: the allow-list is about where requests go
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        url, body = _request_of(order.payload)
        if not host_allowed(url, self.allowed_hosts):
            raise WebhookHostNotAllowed(
                f"webhook host {urlsplit(url).hostname!r} is not in the allow-list "
                f"({', '.join(self.allowed_hosts) or 'empty'}; COGO_WEBHOOK_ALLOWED_HOSTS)"
            )
        if self._secret is None:
            raise PermanentWorkerError("no webhook secret: set COGO_WEBHOOK_SECRET or run with a --data-dir")
        assert self._client is not None
        raw = _encoder.encode(body)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "cogo-notifier",
            SIGNATURE_HEADER: sign(self._secret, timestamp, raw),
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: order.task_id,
        }
        timeout = max(0.1, ctx.deadline - time.time())
        try:
            response = await self._client.post(url, content=raw, headers=headers, timeout=timeout)
        except httpx.TransportError as exc:  # connect / read errors and timeouts
            raise WorkerError(f"webhook {url} unreachable: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(result={"status_code": status, "attempt": order.attempt})
        reason = f"webhook {url} answered {status}"
        if status >= 500 or status in RETRYABLE_STATUS:
            raise WorkerError(reason)
        if 300 <= status < 400:
            reason += " (redirects are not followed)"
        raise PermanentWorkerError(reason)


def _request_of(payload: dict[str, Any]) -> tuple[str, Any]:
    url = payload.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise InvalidPayload("notify payload needs `url`, an http:// or https:// URL")
    if "body" in payload:
        return url, payload["body"]
    return url, {k: v for k, v in payload.items() if k not in ("url", ASSIGNMENT_KEY)}
