"""A real ``cogo up --auth`` for the trust-boundary tests, and what an attacker does with it:
log in as one of its NATS users (passwords from the data dir's ``credentials.json``) and see
whether the streams stored what it published."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors

import cogo
from tests.upsystem import cogo_up_blocking, stop


class SecuredSystem:
    """One running ``cogo up --auth``: its process, endpoints and data dir."""

    def __init__(self, proc: Any, info: dict[str, Any], data_dir: Path) -> None:
        self.proc, self.info, self.data_dir = proc, info, data_dir
        self.passwords: dict[str, str] = json.loads((data_dir / "credentials.json").read_text())

    async def connect(self, user: str) -> tuple[nats.NATS, list[str]]:
        """A plain nats-py connection as ``user``, and the errors the server sends it."""
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            self.info["nats_url"],
            user=user,
            name=f"attacker-{user}",
            password=self.passwords[user],
            error_cb=on_error,
            # the one inbox its permissions let it receive replies on
            inbox_prefix=f"_INBOX_{user}",
            allow_reconnect=False,
        )
        return nc, errors

    def client(self) -> cogo.Client:
        return cogo.Client(data_dir=self.data_dir)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.info["http_url"],
            timeout=30,
            headers={"Authorization": f"Bearer {self.info['api_token']}"},
        )


@contextlib.contextmanager
def secured_system(root: Path, config: str, *apps: str) -> Iterator[SecuredSystem]:
    """``cogo up --auth`` with ``config`` and ``apps`` (``--app REF`` pairs) under ``root``;
    stopped after the block, its log free of tracebacks."""
    config_path = root / "cogo.toml"
    config_path.write_text(config)
    data_dir = root / "data"
    proc, info = cogo_up_blocking(data_dir, config_path, "--auth", *apps)
    try:
        yield SecuredSystem(proc, info, data_dir)
    finally:
        out = stop(proc)
        assert "Traceback" not in out, out[-3000:]


async def accepted(nc: nats.NATS, subject: str, data: bytes, headers: dict[str, str]) -> bool:
    """Whether the stream stored a message the attacker published (False: refused)."""
    try:
        await nc.jetstream().publish(subject, data, headers=headers, timeout=2)
    except (nats.errors.Error, TimeoutError):
        return False
    return True
