"""``cogo cluster config``: generated per-node configuration, TLS for clients and routes, auth
users for an external cluster, store sizing; and ``cogo up`` roles on such a cluster.

The hosts here are three loopback addresses (127.0.0.1-3), each with its own nats-server
started from the generated ``nats.conf``; ``tests/test_cluster_netns.py`` runs the same setup
across network namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogo.config import Config
from cogo.errors import ConfigError
from cogo.streams.cluster import check_store, parse_size
from cogo.streams.connection import connect
from cogo.streams.server import EmbeddedServer, free_port, nats_server_binary
from cogo.streams.topology import ensure_topology
from tests.upsystem import cogo_up, spawn, stop

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def cogo_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cogo", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sizes_and_the_store_check(config: Config) -> None:
    assert parse_size("64GB") == 64 * 1024**3
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("1000") == 1000
    check_store(parse_size("64GB"), config)
    with pytest.raises(Exception, match=r"EVENTS 10GB.*at least 14GB"):
        check_store(parse_size("10GB"), config)


async def test_a_server_too_small_for_the_streams_is_named_not_a_traceback(tmp_path: Path, config: Config) -> None:
    server = EmbeddedServer(tmp_path / "small", sync="default", extra_config="jetstream { max_file_store: 1GB }\n")
    server.start()
    try:
        await server.wait_ready()
        nc = await connect(server.url, "small")
        try:
            with pytest.raises(ConfigError, match=r"no room for stream EVENTS .*at least 14GB"):
                await ensure_topology(nc.jetstream(), config)
        finally:
            await nc.close()
    finally:
        server.stop()


def test_a_store_too_small_is_refused_by_name_not_a_traceback(tmp_path: Path) -> None:
    done = cogo_cli(
        "cluster", "config", "10.0.0.1", "10.0.0.2", "10.0.0.3", "--out", str(tmp_path / "c"), "--store-size", "10GB"
    )
    assert done.returncode == 2, done.stderr
    assert "cogo: error [config.invalid]" in done.stderr
    assert "at least 14GB" in done.stderr and "Traceback" not in done.stderr
    done = cogo_cli("cluster", "config", "10.0.0.1", "10.0.0.2", "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "3 or more nodes" in done.stderr
    done = cogo_cli(
        "cluster",
        "config",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
        "--replicas",
        "4",
        "--out",
        str(tmp_path / "c"),
        "--no-tls",
    )
    assert done.returncode == 2 and "between 1 and 3" in done.stderr


@contextlib.contextmanager
def servers(confs: list[Path], log_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    try:
        for i, conf in enumerate(confs):
            argv = [nats_server_binary(), "-c", str(conf)]
            procs.append(spawn(argv, log=log_dir / f"nats-{i + 1}.log", new_session=True))
        yield procs
    finally:
        for proc in procs:  # all at once: a cluster member waits for its peers to go
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            stop(proc, timeout=15)


async def wait_for_tasks(http: httpx.AsyncClient, ids: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    done: dict[str, Any] = {}
    while time.monotonic() < deadline and len(done) < len(ids):
        for task_id in [t for t in ids if t not in done]:
            r = await http.get(f"/api/tasks/{task_id}")
            if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed"):
                done[task_id] = r.json()
        await asyncio.sleep(0.2)
    return done


@pytest.fixture
def generated(tmp_path: Path) -> dict[str, Any]:
    """``cogo cluster config --auth`` for three loopback hosts, checked: its URL, CA, users."""
    out = tmp_path / "cluster"
    client_port, cluster_port = free_port(), free_port()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    done = cogo_cli(
        "cluster",
        "config",
        *hosts,
        "--out",
        str(out),
        "--auth",
        "--store-size",
        "20GB",
        "--store-dir",
        str(tmp_path / "{node}"),
        "--client-port",
        str(client_port),
        "--cluster-port",
        str(cluster_port),
    )
    assert done.returncode == 0, done.stderr
    env_file = dict(line.split("=", 1) for line in (out / "cogo.env").read_text().split())
    url, ca = env_file["COGO_NATS_URL"], env_file["COGO_NATS_CA"]
    assert url.startswith("tls://") and Path(ca).exists()
    assert oct((out / "credentials.json").stat().st_mode & 0o777) == "0o600"
    passwords = json.loads((out / "credentials.json").read_text())
    echo_env = (out / "credentials" / "echo.env").read_text()
    assert f"COGO_NATS_PASSWORD={passwords['echo']}" in echo_env
    return {"out": out, "url": url, "ca": ca, "passwords": passwords}


async def test_a_generated_cluster_with_tls_and_auth_runs_cogo_in_roles(
    tmp_path: Path, generated: dict[str, Any]
) -> None:
    out, url, ca = generated["out"], generated["url"], generated["ca"]
    passwords = generated["passwords"]
    confs = [out / f"cogo-{i}" / "nats.conf" for i in (1, 2, 3)]
    with servers(confs, tmp_path):
        # no CA, no connection: the servers only speak TLS
        with pytest.raises(Exception):  # noqa: B017 - ssl or nats error, either refuses
            await connect(
                url,
                "no-tls",
                user="admin",
                password=passwords["admin"],
                allow_reconnect=False,
                tls=None,
                connect_timeout=2,
            )
        os.environ["COGO_NATS_CA"] = ca
        try:
            facade_dir, workers_dir = tmp_path / "facade", tmp_path / "workers"
            for data_dir in (facade_dir, workers_dir):
                data_dir.mkdir()
                shutil.copy(out / "credentials.json", data_dir / "credentials.json")
            common = ("--auth", "--nats-url", url)
            facade, endpoints = await cogo_up(facade_dir, out / "cogo.toml", *common, "--role", "facade", timeout=120)
            workers, _ = await cogo_up(workers_dir, out / "cogo.toml", *common, "--role", "workers", timeout=120)
            try:
                assert endpoints["role"] == "facade" and "http_url" in endpoints
                headers = {"Authorization": f"Bearer {endpoints['api_token']}"}
                async with httpx.AsyncClient(base_url=endpoints["http_url"], headers=headers, timeout=30) as http:
                    ids = []
                    for i in range(20):
                        r = await http.post("/api/tasks", json={"route": "echo.run.0", "payload": {"result": i}})
                        assert r.status_code == 202, r.text
                        ids.append(r.json()["task_id"])
                    finished = await wait_for_tasks(http, ids, timeout=90)
                assert {f["status"] for f in finished.values()} == {"succeeded"}, finished
                assert len(finished) == len(ids)
                nc = await connect(url, "check", user="admin", password=passwords["admin"])
                try:
                    info = await nc.jetstream().stream_info("EVENTS")
                    assert info.config.num_replicas == 3
                finally:
                    await nc.close()
            finally:
                log = stop(workers) + stop(facade)
            assert "Traceback" not in log, log
        finally:
            os.environ.pop("COGO_NATS_CA", None)


def test_up_on_an_external_cluster_without_its_credentials_says_what_to_copy(
    tmp_path: Path,
) -> None:
    done = cogo_cli(
        "up", "--auth", "--nats-url", "nats://127.0.0.1:1", "--data-dir", str(tmp_path / "d"), "--role", "workers"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "credentials.json" in done.stderr and "KeyError" not in done.stderr
