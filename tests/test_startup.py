"""``cogo up`` start-up and its store: taken ports, foreign servers, failures half-way,
hard kills and servers left behind (real processes, real ports)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from cogo.errors import PortInUse
from cogo.streams.connection import connect
from cogo.streams.server import EmbeddedServer, nats_server_binary
from cogo.streams.store_lock import alive
from tests.helpers import SUITE_CONFIG, wait_until
from tests.upsystem import cogo, cogo_up, spawn


def processes_under(path: Path) -> list[int]:
    """Pids of the processes whose command line names ``path`` (ours: cogo up, server, actors)."""
    needle = os.fsencode(str(path))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def configured(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "cogo.toml").write_text(SUITE_CONFIG)
    return data_dir


def up(data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``cogo up`` with its output on a pipe: for the refusals, whose last line is read."""
    configured(data_dir)
    return cogo("up", "--data-dir", str(data_dir), "--sync", "default", *extra)


async def refused(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, _ = await asyncio.to_thread(proc.communicate, timeout=60)  # it ends on its own
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


async def test_a_taken_http_port_is_refused_by_name(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = await refused(up(tmp_path / "d", "--http-port", str(port)))
    assert code == 2
    assert line.startswith("cogo: error [startup.port_in_use]: HTTP port") and str(port) in line
    assert processes_under(tmp_path / "d") == []


async def test_a_taken_nats_port_never_joins_the_server_on_it(tmp_path):
    foreign = EmbeddedServer(tmp_path / "foreign", sync="default")
    foreign.start()
    try:
        await foreign.wait_ready()
        code, line = await refused(up(tmp_path / "d", "--nats-port", str(foreign.port)))
        assert code == 2 and "[startup.port_in_use]: NATS port" in line
        assert str(foreign.port) in line
        # the race the pre-check cannot close: the port taken after it. Our server exits
        # with "address already in use"; readiness must not take the other one for it.
        ours = EmbeddedServer(tmp_path / "ours", foreign.port, sync="default")
        ours.start()
        try:
            with pytest.raises(PortInUse, match=str(foreign.port)):
                await ours.wait_ready()
        finally:
            ours.stop()
        nc = await connect(foreign.url, "check")
        try:
            assert [s async for s in _streams(nc)] == []  # nothing was created over there
        finally:
            await nc.close()
    finally:
        foreign.stop()
    assert processes_under(tmp_path / "d") == []


async def _streams(nc):
    for info in await nc.jetstream().streams_info():
        yield info.config.name


async def test_a_failure_half_way_stops_everything_started(tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "cogo.duckdb").write_bytes(b"not a database" * 100)  # the projector fails
    code, line = await refused(up(data_dir))
    assert code == 2 and "[projection.error]" in line
    # the server and the actors had started before the projector: all are gone
    assert processes_under(data_dir) == []
    assert not (data_dir / "endpoints.json").exists()


async def test_a_killed_cogo_up_leaves_nothing_and_its_store_has_one_owner(tmp_path):
    data_dir = tmp_path / "d"
    first, _ = await cogo_up(configured(data_dir))
    assert len(processes_under(data_dir)) >= 3  # cogo up, nats-server, actors
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.communicate, timeout=30)
    # the kernel stops its children (PR_SET_PDEATHSIG): no server lives on on the store
    await wait_until(lambda: processes_under(data_dir) == [], 30)

    second, info = await cogo_up(configured(data_dir))
    try:
        # a second cogo up on the same store is refused, and the first is unharmed
        code, line = await refused(up(data_dir))
        assert code == 2 and "[startup.store_in_use]" in line and str(second.pid) in line
        nc = await connect(info["nats_url"], "check")
        await nc.jetstream().account_info()
        await nc.close()
        assert second.poll() is None
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.to_thread(second.communicate, timeout=60)
    assert second.returncode == 0
    assert processes_under(data_dir) == []


async def test_a_server_left_behind_on_the_store_is_stopped(tmp_path):
    data_dir = tmp_path / "d"
    server = EmbeddedServer(data_dir, sync="default")
    data_dir.mkdir()
    server.store_dir.mkdir()
    # a server nobody owns (started by hand, or by a version without the lock)
    argv = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", "0"]
    argv += ["--pid", str(server.pid_file), "-sd", str(server.store_dir)]
    orphan = spawn(argv, log=tmp_path / "orphan.log", new_session=True)
    try:
        await wait_until(lambda: server.pid_file.exists() and server.pid_file.read_text().strip())
        server.start()
        try:
            await server.wait_ready()
            assert orphan.poll() is not None  # stopped before ours started on its store
            servers = [p for p in processes_under(server.store_dir)]
            assert servers == [server.process.pid]
        finally:
            server.stop()
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait(10)
