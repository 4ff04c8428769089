"""The projector when things go wrong: killed mid-batch (exactly once across kill -9), the
projection rebuilt by replay, and events aged out of the stream under it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from nats.js.errors import NotFoundError

from cogo.bench.projections import fill, synthetic_events
from cogo.errors import ProjectionBusy
from cogo.projections.projector import consumer_name
from cogo.projections.replay import replay_offline
from cogo.projections.store import connect, db_path
from cogo.streams.topology import ensure_topology
from tests.helpers import projecting, wait_until
from tests.projection_support import dead_letter, snapshot, workload
from tests.upsystem import cogo

# -- exactly once ----------------------------------------------------------------------


def _spawn_projector(url: str, data_dir: Path, batch: int) -> subprocess.Popen[bytes]:
    env = {"COGO_PROJECTOR_BATCH": str(batch)}
    args = ("-v", "run", "projector", "--nats-url", url, "--data-dir", str(data_dir))
    return cogo(*args, env=env, log=data_dir / "projector.log")


def _log(data_dir: Path) -> str:
    return (data_dir / "projector.log").read_text(errors="replace")[-4000:]


async def _ack_floor(js: Any, data_dir: Path) -> int:
    try:
        info = await js.consumer_info("EVENTS", consumer_name(data_dir), timeout=1)
    except (NotFoundError, TimeoutError):
        return 0
    return int(info.ack_floor.stream_seq or 0)


async def _forget_consumer(js: Any, data_dir: Path) -> None:
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer("EVENTS", consumer_name(data_dir))


async def test_exactly_once_across_kill_9(nats_server, js, data_dir):
    total = 40_000  # ~0.5 s of work at these batch sizes: the kills land mid-stream
    await fill(js, synthetic_events(total))
    rng = random.Random(11)
    kills_mid_stream = 0
    floor = 0
    for _ in range(4):
        await _forget_consumer(js, data_dir)  # so the floor we watch is this child's
        child = _spawn_projector(nats_server.url, data_dir, batch=rng.choice([97, 250, 400]))
        deadline = time.monotonic() + 15
        # (a child that finds everything applied has nothing to show: no wait then)
        while floor < total and await _ack_floor(js, data_dir) <= floor and child.poll() is None:
            assert time.monotonic() < deadline, "projector made no progress"
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.0, 0.15))  # somewhere mid-batch or mid-commit
        floor = await _ack_floor(js, data_dir)
        child.send_signal(signal.SIGKILL)
        await asyncio.to_thread(child.wait)
        kills_mid_stream += 0 < floor < total
    assert kills_mid_stream >= 2, "the kills should land while the projector is mid-stream"
    await _forget_consumer(js, data_dir)
    child = _spawn_projector(nats_server.url, data_dir, batch=1000)
    deadline = time.monotonic() + 20
    while await _ack_floor(js, data_dir) < total:
        assert child.poll() is None, _log(data_dir)
        assert time.monotonic() < deadline, "projector did not catch up"
        await asyncio.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    try:
        assert await asyncio.to_thread(child.wait, 30) == 0, _log(data_dir)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail(f"projector did not stop on SIGTERM:\n{_log(data_dir)}")
    con = duckdb.connect(str(db_path(data_dir)), read_only=True)
    try:
        count, seqs, ids, low, high = con.execute(
            "SELECT count(*), count(DISTINCT seq), count(DISTINCT event_id), min(seq), max(seq) FROM bus_events"
        ).fetchone()
        checkpoint = con.execute("SELECT last_seq FROM projector_checkpoint WHERE stream = 'EVENTS'").fetchone()[0]
    finally:
        con.close()
    assert (count, seqs, ids, low, high, checkpoint) == (total, total, total, 1, total, total)


# -- replay ----------------------------------------------------------------------------


async def test_replay_rebuilds_identical_projection(nats_server, nc, js, config, data_dir, tmp_path):
    await workload(nats_server, js, config)
    await dead_letter(js, 3)
    async with projecting(nc, config, data_dir, batch=7) as projector:
        await projector.wait_caught_up()
        await projector.store.close()  # flush to the file for a read-only snapshot
        before = snapshot(projector.path)
        await projector.store.open()
        seen: list[Any] = []
        result = await projector.rebuild(progress=seen.append)  # while running
        await projector.store.close()
        after = snapshot(projector.path)
        await projector.store.open()
        # ingest resumed on the new file, from its checkpoint
        await js.publish("events.after_replay", b'{"event_id": "late", "type": "late"}')
        await projector.wait_caught_up()
        late = await projector.store.read(
            lambda cur: cur.execute("SELECT count(*) FROM bus_events WHERE type = 'late'").fetchone()
        )
    assert after == before
    assert late == (1,)
    assert result.messages["EVENTS"] == len(before["bus_events"])
    assert result.messages["DLQ"] == 3 and not result.warnings
    assert seen and seen[-1].applied == seen[-1].total
    assert not await asyncio.to_thread(Path(f"{db_path(data_dir)}.replay").exists)

    # and offline, into another data dir, from nothing
    other = tmp_path / "other"
    offline = await replay_offline(nc, other, batch=5000)
    rebuilt = snapshot(db_path(other))
    assert rebuilt["bus_events"][: len(before["bus_events"])] == before["bus_events"]
    assert offline.messages["EVENTS"] == len(before["bus_events"]) + 1


async def test_replay_refuses_a_file_another_process_owns(nats_server, nc, js, data_dir):
    await fill(js, synthetic_events(10))
    child = _spawn_projector(nats_server.url, data_dir, batch=100)
    try:
        deadline = time.monotonic() + 15
        while await _ack_floor(js, data_dir) < 10:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(ProjectionBusy, match="in use by another process"):
            await replay_offline(nc, data_dir)
    finally:
        child.send_signal(signal.SIGTERM)
        await asyncio.to_thread(child.wait, 15)


# -- retention -------------------------------------------------------------------------


async def test_projector_and_replay_survive_aged_out_events(nc, js, config, data_dir, tmp_path):
    await fill(js, synthetic_events(100))
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
    await fill(js, synthetic_events(200)[100:])  # seqs 101..200, not yet projected
    await js.purge_stream("EVENTS", seq=151)  # retention took 1..150: the checkpoint (100) is older
    async with projecting(nc, config, data_dir) as projector:
        await projector.wait_caught_up()
        stats = projector.stats()["streams"]["EVENTS"]
        rows = await projector.store.read(
            lambda cur: cur.execute("SELECT count(*), min(seq), max(seq) FROM bus_events").fetchone()
        )
    # 1..100 were projected before, then left the stream: the projection lets them go too;
    # 101..150 left before they were projected; 151..200 are projected now
    assert rows == (50, 151, 200)
    assert stats["aged_out"] == 50 and stats["pruned"] == 100
    assert stats["applied_seq"] == 200 and stats["lag"] == 0

    result = await replay_offline(nc, tmp_path / "replayed")
    assert result.first_seq["EVENTS"] == 151
    assert any("starts at sequence 151" in w for w in result.warnings)
    con = connect(db_path(tmp_path / "replayed"), read_only=True)
    try:
        assert con.execute("SELECT count(*), min(seq) FROM bus_events").fetchone() == (50, 151)
    finally:
        con.close()


def _file_bytes(path: Path) -> int:
    wal = Path(f"{path}.wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_max_age_applies_to_the_projection(nc, js, config, data_dir):
    # [events] max_age_s: the stream drops old events, and so does DuckDB, rollups included
    config = msgspec.structs.replace(
        config,
        events=msgspec.structs.replace(config.events, max_age_s=1.0),
        # the server wants the duplicate window inside max_age
        bus=msgspec.structs.replace(config.bus, duplicate_window_s=1.0),
    )
    await ensure_topology(js, config)
    async with projecting(nc, config, data_dir) as projector:
        projector.retention_every_s = 0.1
        await fill(js, synthetic_events(600))
        await projector.wait_caught_up()

        async def counts() -> tuple[int, int]:
            return await projector.store.read(
                lambda cur: cur.execute(
                    "SELECT (SELECT count(*) FROM bus_events), "
                    "(SELECT coalesce(sum(events), 0) FROM rollup_total_events)"
                ).fetchone()
            )

        assert await counts() in ((600, 0), (600, 600))  # the tail may not be folded yet

        async def aged_out() -> bool:
            info = await js.stream_info("EVENTS")
            return info.state.messages == 0 and await counts() == (0, 0)

        await wait_until(aged_out, 20, "events aged out of the stream and the projection")
        assert projector.stats()["streams"]["EVENTS"]["pruned"] == 600


async def test_projection_size_stays_bounded_under_a_stream_of_events(nc, js, config, data_dir):
    # retention keeps the newest `kept` events (as max_age does, without waiting for it):
    # the row count follows the stream's exactly and the file stops growing
    kept, per_round, rounds = 4000, 2000, 14
    events = synthetic_events(per_round * rounds)
    sizes = []
    async with projecting(nc, config, data_dir) as projector:
        projector.retention_every_s = 0.1
        for r in range(rounds):
            await fill(js, events[r * per_round : (r + 1) * per_round])
            await js.purge_stream("EVENTS", keep=kept)
            await projector.wait_caught_up(timeout=60)
            state = (await js.stream_info("EVENTS")).state
            target = (state.messages, state.first_seq)

            async def mirrored(target: tuple[int, int] = target) -> bool:
                row = await projector.store.read(
                    lambda cur: cur.execute("SELECT count(*), min(seq) FROM bus_events").fetchone()
                )
                return row == target

            await wait_until(mirrored, 20, f"round {r}: the projection holds what the stream holds")
            # what the automatic one does at 64 MB of WAL, now; it fails if a reader's result
            # still pins a transaction (ProjectionStore.reader)
            await projector.store.write(lambda: projector.store.con.execute("CHECKPOINT"))
            sizes.append(await asyncio.to_thread(_file_bytes, projector.path))
        totals = await projector.store.read(
            lambda cur: cur.execute(
                "SELECT (SELECT sum(events) FROM rollup_total_events) "
                "+ (SELECT count(*) FROM bus_events WHERE seq > "
                "(SELECT folded_seq FROM rollup_state))"
            ).fetchone()
        )
    assert totals == (kept,)  # the rollups (plus their unfolded tail) follow retention too
    # 28,000 events went through, 4,000 stay: once the freed blocks are reused (by the
    # fourth round) the file stops growing
    assert max(sizes[6:]) <= 1.1 * max(sizes[3:6]), sizes
