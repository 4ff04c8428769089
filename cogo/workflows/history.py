"""Workflow events in the ``EVENTS`` stream: where they go, how they are read back.

Workflow events are published on ``events.<type>.wf.<workflowId>.<runId>`` (docs/design.md §5:
``events.<kind>.<...>``), so the log can be read per run (``events.*.wf.*.<runId>``), per
workflow (``events.workflow_started.wf.<id>.*``) or all together (``events.*.wf.>``)
without scanning anything else. Reading uses a short-lived ephemeral consumer (no acks,
memory storage) that is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import nats.errors
from nats.js import api
from nats.js.client import JetStreamContext

from cogo.streams.catalogue import RUN_OUTCOMES, WORKFLOW_STARTED, RunData, data_of
from cogo.streams.envelope import MSG_ID
from cogo.streams.events import Event, decode_event, encode_event
from cogo.streams.topology import EVENTS
from cogo.workflows.run import RunState, fold

log = logging.getLogger(__name__)

BATCH = 1000
RUN_LEVEL_TYPES = (WORKFLOW_STARTED, *RUN_OUTCOMES)


def subject_of(event: Event) -> str:
    """``events.<type>.wf.<workflowId>.<runId>`` for a workflow event."""
    workflow_id = data_of(event, RunData).workflow_id or "_"
    return f"events.{event.type}.wf.{workflow_id}.{event.correlation_id}"


def run_subjects(run_id: str) -> list[str]:
    return [f"events.*.wf.*.{run_id}"]


def run_level_subjects(workflow_id: str | None = None) -> list[str]:
    """Starts and outcomes of runs (of one workflow, or all)."""
    return [f"events.{t}.wf.{workflow_id or '*'}.*" for t in RUN_LEVEL_TYPES]


def message(event: Event) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, data, headers)`` of a workflow event, to publish with others."""
    return subject_of(event), encode_event(event), {MSG_ID: event.event_id}


async def append(js: JetStreamContext, event: Event) -> tuple[int, bool]:
    """Append a workflow event; returns its stream sequence and whether it was a duplicate.

    For a duplicate, JetStream answers with the sequence of the event already stored.
    """
    ack = await js.publish(subject_of(event), encode_event(event), headers={MSG_ID: event.event_id}, timeout=10)
    return ack.seq, bool(ack.duplicate)


async def stored(js: JetStreamContext, seq: int) -> Event:
    """The event stored at ``seq``."""
    msg = await js.get_msg(EVENTS, seq=seq)
    return decode_event(msg.data or b"")


class Tail:
    """An ephemeral pull subscription over some event subjects (see ``tail``)."""

    def __init__(self, sub: Any, name: str, pending: int) -> None:
        self.sub = sub
        self.name = name
        # matching events not yet delivered, as of the last batch
        self.pending = pending

    async def fetch(self, timeout: float) -> list[tuple[int, Event]]:
        """The next batch of ``(sequence, event)`` pairs; empty when nothing came."""
        try:
            msgs = await self.sub.fetch(BATCH, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        out = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                out.append((seq, decode_event(msg.data)))
            except msgspec.DecodeError:
                log.warning("skipping an undecodable event at seq %d", seq)
        if msgs:
            self.pending = msgs[-1].metadata.num_pending
        return out


@contextlib.asynccontextmanager
async def tail(js: JetStreamContext, subjects: Sequence[str], start_seq: int | None = None) -> AsyncIterator[Tail]:
    """Events on ``subjects`` from ``start_seq`` (or the start), through an ephemeral
    consumer that is deleted on exit (and expires by itself if this process dies)."""
    config = api.ConsumerConfig(
        filter_subjects=list(subjects),
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=(api.DeliverPolicy.BY_START_SEQUENCE if start_seq else api.DeliverPolicy.ALL),
        opt_start_seq=start_seq or None,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    sub = await js.pull_subscribe("", stream=EVENTS, config=config)
    info = await sub.consumer_info()
    try:
        yield Tail(sub, info.name, info.num_pending or 0)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(EVENTS, info.name)


async def read(js: JetStreamContext, subjects: Sequence[str], start_seq: int | None = None) -> list[tuple[int, Event]]:
    """Every event on ``subjects`` stored now, in stream order."""
    events: list[tuple[int, Event]] = []
    async with tail(js, subjects, start_seq) as reader:
        while reader.pending:
            batch = await reader.fetch(timeout=2.0)
            if not batch:
                break
            events.extend(batch)
    return events


async def read_run(js: JetStreamContext, run_id: str) -> RunState:
    """A run's state, folded from its events (an empty, unstarted state if there are none)."""
    return fold(run_id, await read(js, run_subjects(run_id)))


async def list_runs(js: JetStreamContext, workflow_id: str | None = None) -> list[RunState]:
    """Every run (of one workflow), from starts and outcomes only, oldest first."""
    runs: dict[str, RunState] = {}
    for seq, event in await read(js, run_level_subjects(workflow_id)):
        run_id = event.correlation_id or ""
        runs.setdefault(run_id, RunState(run_id=run_id)).apply(event, seq)
    return [run for run in runs.values() if run.started]
