"""Several projectors on one stream (several ``cogo up`` on one cluster): each keeps a whole
projection on a durable consumer of its own, named for its node and data dir, and none ever
deletes another's (two sharing ``projector`` deleted each other's, and one DuckDB file fell
260 rows short of EVENTS)."""

from __future__ import annotations

from pathlib import Path

import duckdb
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cogo.bench.projections import fill, synthetic_events
from cogo.config import Config
from cogo.projections.projector import DEFAULT_CONSUMER, Projector, consumer_name
from cogo.projections.store import db_path
from cogo.streams.topology import EVENTS


def test_each_data_dir_has_its_own_stable_consumer(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert consumer_name(one) == consumer_name(tmp_path / "x" / ".." / "one")  # stable
    assert consumer_name(one) != consumer_name(two)
    assert consumer_name(one).startswith(f"{DEFAULT_CONSUMER}-")
    # a valid JetStream durable name: no dots, spaces or wildcards, whatever the hostname
    assert all(c.isalnum() or c in "-_" for c in consumer_name(one))


def rows(data_dir: Path) -> int:
    with duckdb.connect(str(db_path(data_dir)), read_only=True) as con:
        found = con.execute("SELECT count(*) FROM bus_events").fetchone()
    assert found is not None
    return int(found[0])


async def test_two_projectors_each_keep_a_whole_projection(
    nc: NATS, js: JetStreamContext, config: Config, tmp_path: Path
) -> None:
    first = Projector(nc, config, data_dir=tmp_path / "up-1", batch=200)
    second = Projector(nc, config, data_dir=tmp_path / "up-2", batch=200)
    await first.start()
    await second.start()
    try:
        await fill(js, synthetic_events(1500, seed=1))
        # the second `cogo up` restarts over and over meanwhile: each start resets its feed
        for seed in range(2, 5):
            await second.stop()
            second = Projector(nc, config, data_dir=tmp_path / "up-2", batch=200)
            await second.start()
            await fill(js, synthetic_events(500, seed=seed))
        await first.wait_caught_up(30)
        await second.wait_caught_up(30)
        names = {c.name for c in await js.consumers_info(EVENTS)}
        assert {consumer_name(tmp_path / "up-1"), consumer_name(tmp_path / "up-2")} <= names
        assert first.streams[EVENTS].resets == 0  # never lost its consumer to the other
    finally:
        await first.stop()
        await second.stop()
    total = (await js.stream_info(EVENTS)).state.messages
    assert total > 1500  # later fills added events (ids repeat across seeds: deduplicated)
    assert rows(tmp_path / "up-1") == total
    assert rows(tmp_path / "up-2") == total
