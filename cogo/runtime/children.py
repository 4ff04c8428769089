"""A durable parent and its children (``ctx.call``), seen from the dispatcher.

A child's terminal event wakes its parent: ``wake_messages`` builds the ``<child>:wake``
command (with the child's result and what its own tree spent) that goes out in the same
batch as the event, and the cancels of the children a task left running when it ends.
The dispatcher sets the context variables below around the result it is handling, since
those facts travel in the result, not in the event. ``started_children`` reads from a
task's journal the children it started (what a cancel must reach).
"""

from __future__ import annotations

import contextlib
import contextvars

import msgspec
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.client import JetStreamContext

from cogo.sdk.steps import task_bucket
from cogo.streams.catalogue import (
    CALL_STARTED,
    EXECUTE_DONE,
    TERMINAL_TYPES,
    CallCompleted,
    CallStarted,
    data_of,
)
from cogo.streams.commands import (
    COMMAND_SUBJECT,
    WAKE_KIND,
    Wake,
    cancel_message,
)
from cogo.streams.envelope import (
    CALL_KEY,
    KIND_HEADER,
    MSG_ID,
    Usage,
    WorkOrder,
    encoder,
    new_id,
)
from cogo.streams.events import (
    Event,
    decode_event,
    iso,
)
from cogo.streams.publisher import Outgoing
from cogo.streams.seal import guard_id
from cogo.streams.topology import EVENTS

SCAN_IDLE_S = 10.0  # a journal read that hears nothing this long is over

# what the children of the task whose result is being handled spent (for its parent's
# call_completed): set by the dispatcher around a result, read where terminal events are built
tree_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("cogo_tree_usage", default=None)
# the children that task started and that had not ended: cancelled if it ends now
pending_children: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "cogo_pending_children", default=None
)
# the route of the parent of the task whose result is being handled (a child of ctx.call
# carries it in its payload): where its call_completed is journaled
parent_route: contextvars.ContextVar[str | None] = contextvars.ContextVar("cogo_parent_route", default=None)


def route_of_parent(order: WorkOrder) -> str | None:
    """The parent's route a ``ctx.call`` child's order carries (None for any other task)."""
    call = order.payload.get(CALL_KEY) if isinstance(order.payload, dict) else None
    route = call.get("route") if isinstance(call, dict) else None
    return route if isinstance(route, str) and route else None


def parent_of(event: Event) -> str | None:
    """The parent of a task started by ``ctx.call`` (id ``<parent>/<key>``, caused by it)."""
    cause, task_id = event.causation_id, event.task_id
    if cause and task_id and task_id.startswith(cause + "/") and "/" not in task_id[len(cause) + 1 :]:
        return cause
    return None


def wake_messages(event: Event, token: str | None = None) -> list[Outgoing]:
    """A child's terminal event wakes its parent, and a parent's cancels the children it
    left running (published in the same batch); the wake-up's id is guarded by the child's
    ``token`` (nobody else can take it first)."""
    if event.type not in TERMINAL_TYPES or event.task_id is None:
        return []
    orphans: list[Outgoing] = [
        cancel_message(c, f"parent {event.task_id} ended", parent_id=event.task_id)
        for c in pending_children.get() or []
    ]
    parent = parent_of(event)
    if parent is None:
        return orphans
    own = event.usage or Usage()
    below = tree_usage.get() or Usage()
    result = None
    if event.type == EXECUTE_DONE and isinstance(event.data, msgspec.Struct):
        result = getattr(event.data, "result", None)
    elif event.type == EXECUTE_DONE and isinstance(event.data, dict):
        result = event.data.get("result")
    done = CallCompleted(
        child_id=event.task_id,
        ok=event.type == EXECUTE_DONE,
        result=result,
        error_code=event.error_code,
        error=event.error,
        attempts=event.attempt or 0,
        tree_tokens=own.tokens + below.tokens,
        tree_cost_usd=round(own.cost_usd + below.cost_usd, 9),
    )
    wake = Wake(
        task_id=parent,
        kind="call",
        name=event.task_id,
        done=done,
        correlation_id=event.correlation_id,
        route=parent_route.get(),
    )
    headers = {MSG_ID: guard_id(token, f"{event.task_id}:wake"), KIND_HEADER: WAKE_KIND}
    return [(COMMAND_SUBJECT, encoder.encode(wake), headers), *orphans]


async def started_children(
    nc: NATS, js: JetStreamContext, task_id: str, route: str | None, since: float | None
) -> dict[str, str]:
    """Children ``task_id`` started (with their routes), read from its route's journal
    (from ``since`` on when known: a subject holds every task of a 64th bucket). Only
    entries of the task's own route count (no other app may append there), and only
    children of its own (``<task>/<key>``), the route unknown included."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    started: dict[str, str] = {}
    bucket = task_bucket(task_id)
    name = f"children-{new_id()}"
    try:
        info = await js.add_consumer(
            EVENTS,
            api.ConsumerConfig(
                name=name,
                # one filter, in the request's subject: what --auth grants it
                filter_subject=f"events.{CALL_STARTED}.{route or '*'}.{bucket}",
                deliver_subject=inbox,
                deliver_policy=api.DeliverPolicy.BY_START_TIME if since else api.DeliverPolicy.ALL,
                # the server takes RFC 3339 text; nats-py's annotation says datetime
                opt_start_time=iso(since) if since else None,  # type: ignore[arg-type]
                ack_policy=api.AckPolicy.NONE,
                max_deliver=1,
                inactive_threshold=5.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        pending = info.num_pending or 0
        while pending > 0:
            msg = await sub.next_msg(timeout=SCAN_IDLE_S)
            pending = int(msg.reply.rsplit(".", 1)[-1]) if msg.reply else 0
            event = decode_event(msg.data)
            if event.task_id != task_id or event.type != CALL_STARTED:
                continue
            if route is not None and event.route != route:
                continue
            with contextlib.suppress(msgspec.ValidationError):
                call = data_of(event, CallStarted)
                if call.child_id.startswith(task_id + "/"):
                    started.setdefault(call.child_id, call.child_route)
    finally:
        await sub.unsubscribe()
    # an ended child's cancel changes nothing: its terminal event came first
    return started
