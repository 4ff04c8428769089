"""Projector ingest alone: fresh projectors on a pre-filled ``EVENTS``, from zero to caught up.

The system's other processes are stopped first; ``EVENTS`` is topped up with synthetic
events to ``--projector-events``; each of ``--projector-runs`` projectors has its own
consumer and DuckDB file, and the median rate is the figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.js.errors import NotFoundError

from cogo.bench.system import Bench
from cogo.config import PROJECTOR_CONSUMER_ENV
from cogo.errors import CogoError
from cogo.streams.topology import EVENTS

INGEST_CONSUMER = "projector-ingest"


async def projector_ingest(bench: Bench) -> list[float]:
    """Stop the system, top EVENTS up, time fresh projectors from zero to caught up."""
    for label in [x for x in bench.children if x != "projector"]:
        await bench.stop_child(label)
    await bench.wait_projected(await bench.events_last_seq(), time.monotonic() + 120)
    await bench.stop_child("projector")
    last = await bench.events_last_seq()
    if last < bench.o.projector_events:
        await _fill_events(bench, bench.o.projector_events - last)
        last = await bench.events_last_seq()
    rates = []
    for run in range(1, bench.o.projector_runs + 1):
        rates.append(await _ingest_once(bench, run, last))
    return rates


async def _ingest_once(bench: Bench, run: int, last: int) -> float:
    label, consumer = f"projector-ingest-{run}", f"{INGEST_CONSUMER}-{run}"
    update = bench.progress.task(f"projector ingest {run}/{bench.o.projector_runs}", last)
    bench.spawn(
        "projector",
        label,
        data_dir=bench.dir / f"ingest-{run}",
        env={PROJECTOR_CONSUMER_ENV: consumer},
    )
    deadline = time.monotonic() + bench.o.timeout
    # the clock starts when the consumer exists (DuckDB open, schema created)
    while (seq := await bench.projected_seq(consumer)) is None:
        if time.monotonic() > deadline:
            raise CogoError("the ingest projector did not start")
        bench.check_children()
        await asyncio.sleep(0.01)
    began, start_seq = time.perf_counter(), seq
    while seq < last:
        if time.monotonic() > deadline:
            raise CogoError(f"the ingest projector reached {seq} of {last} in time")
        bench.check_children()
        update(seq, "")
        await asyncio.sleep(0.01)
        seq = await bench.projected_seq(consumer) or 0
    rate = (last - start_seq) / (time.perf_counter() - began)
    update(last, f"{rate:,.0f} events/s")
    await bench.stop_child(label)
    with contextlib.suppress(NotFoundError):
        await bench.js.delete_consumer(EVENTS, consumer)
    return rate


async def _fill_events(bench: Bench, count: int) -> None:
    from cogo.bench.projections import fill, synthetic_events

    await fill(bench.js, synthetic_events(count))
