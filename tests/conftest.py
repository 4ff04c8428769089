"""Fixtures: a real nats-server per test on a random loopback port, chained
``data_dir -> nats_server -> nc -> js -> topology`` (as nats.py's own tests do), and the
fixtures several test modules share (test modules never import each other)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cogo.config import Config, load_config
from cogo.runtime.loader import declare_apps
from cogo.streams.connection import connect
from cogo.streams.server import EmbeddedServer
from cogo.testing import ChatServer
from tests.code_pipeline import EXAMPLES
from tests.helpers import SUITE_CONFIG
from tests.workflow_support import CHILD, PARENT, Webhook, serving_webhook


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "cogo.toml"
    path.write_text(SUITE_CONFIG)
    return path


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def nats_server(data_dir: Path) -> Iterator[EmbeddedServer]:
    # tests use the server's default fsync: durability is measured by the benchmark
    server = EmbeddedServer(data_dir, sync=os.environ.get("COGO_TEST_SYNC", "default"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[NATS]:
    await nats_server.wait_ready()
    client = await connect(nats_server.url, "cogo-test")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def js(nc: NATS, config: Config) -> JetStreamContext:
    js = nc.jetstream()
    await declare_apps(js, config)
    return js


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A real HTTP receiver on 127.0.0.1 that records what it is sent."""
    with serving_webhook() as hook:
        yield hook


@pytest.fixture
def workflows_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog directory (``COGO_WORKFLOWS_DIR``) holding the ``child`` and ``parent``
    workflows."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    for definition in (CHILD, PARENT):
        (folder / f"{definition['id']}.json").write_text(json.dumps(definition))
    monkeypatch.setenv("COGO_WORKFLOWS_DIR", str(folder))
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh copy of ``examples/sample-repo`` (the code pipeline edits, builds and tests it)."""
    target = tmp_path / "sample-repo"
    shutil.copytree(EXAMPLES / "sample-repo", target)
    return target


@pytest.fixture
def tool_log(tmp_path: Path, chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the helpdesk examples log each tool run (``$HELPDESK_TOOL_LOG``), with
    ``chat_server`` as the LLM endpoint of anything started in the test."""
    path = tmp_path / "tool-runs.jsonl"
    monkeypatch.setenv("HELPDESK_TOOL_LOG", str(path))
    monkeypatch.setenv("COGO_LLM_BASE_URL", chat_server.url)
    monkeypatch.setenv("COGO_LLM_API_KEY", "test-key")
    return path
