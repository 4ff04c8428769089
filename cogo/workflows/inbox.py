"""The orchestrator's inbox: the commands it takes, and the partition of runs each goes to.

Runs are split into ``PARTITIONS`` partitions by a hash of the run id. Commands for a run
go to ``orchestrator.workflow.<partition>`` (``TASKS``, a work queue with one durable
consumer per partition), so the one orchestrator that holds a partition's lease
(``cogo.streams.leases``) receives every command of its runs, and nobody else does.

Commands (JSON, tagged by ``op``), each published with a deterministic ``Nats-Msg-Id``:

    start    {run_id, plan, parent?}             <run>:start
    cancel   {run_id, reason?, workflow_id?}     <run>:cancel
    signal   {run_id, name, data, signal_id}     <run>:signal:<signal_id>
    outcome  {run_id, event}                     fwd:<event id>

``outcome`` carries a task's terminal event (``execute_done`` / ``execute_failed``) that an
orchestrator received from the shared ``EVENTS`` consumer for a run it does not hold: it
forwards the event into the run's partition instead of dropping it.
"""

from __future__ import annotations

import zlib
from typing import Annotated, Any

import msgspec
from nats.js.client import JetStreamContext

from cogo.errors import MalformedMessage
from cogo.streams.envelope import MSG_ID, encoder
from cogo.streams.topology import ORCHESTRATOR_PARTITIONS, orchestrator_route
from cogo.workflows.definition import RUN_ID, SIGNAL_NAME

PARTITIONS = ORCHESTRATOR_PARTITIONS

RunId = Annotated[str, msgspec.Meta(pattern=RUN_ID)]
SignalName = Annotated[str, msgspec.Meta(pattern=SIGNAL_NAME)]
SignalId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$")]


def partition_of(run_id: str) -> int:
    """The partition of a run: a stable hash of its id (crc32, the same on every host)."""
    return zlib.crc32(run_id.encode()) % PARTITIONS


def subject_of(run_id: str) -> str:
    """Where the commands of ``run_id`` go."""
    return orchestrator_route(partition_of(run_id))


class StartRun(msgspec.Struct, frozen=True, tag="start", tag_field="op"):
    """Start a run of ``plan`` (a checked ``Plan`` as JSON) under ``run_id``."""

    run_id: RunId
    plan: dict[str, Any]
    # set for a child run: {"runId", "nodeId", "index"?, "workflowId", "ancestry"}
    parent: dict[str, Any] | None = None


class CancelRun(msgspec.Struct, frozen=True, tag="cancel", tag_field="op"):
    """Cancel a run: nothing new starts; its running tasks and child runs are cancelled."""

    run_id: RunId
    reason: str | None = None
    # lets a cancel that overtakes its run's start still file the outcome under the workflow
    workflow_id: str | None = None


class SignalRun(msgspec.Struct, frozen=True, tag="signal", tag_field="op"):
    """Deliver signal ``name`` with ``data`` to a run (kept if its node has not started)."""

    run_id: RunId
    name: SignalName
    signal_id: SignalId
    data: Any = None


class TaskOutcome(msgspec.Struct, frozen=True, tag="outcome", tag_field="op"):
    """A task's terminal event, forwarded to the partition of the run it belongs to."""

    run_id: RunId
    event: dict[str, Any]


Command = StartRun | CancelRun | SignalRun | TaskOutcome
_decoder = msgspec.json.Decoder(Command)


def msg_id_of(command: Command) -> str:
    """The ``Nats-Msg-Id`` that makes sending ``command`` twice store it once."""
    if isinstance(command, StartRun):
        return f"{command.run_id}:start"
    if isinstance(command, CancelRun):
        return f"{command.run_id}:cancel"
    if isinstance(command, SignalRun):
        return f"{command.run_id}:signal:{command.signal_id}"
    return f"fwd:{command.event.get('event_id')}"


async def send_command(js: JetStreamContext, command: Command, msg_id: str | None = None) -> bool:
    """Publish a command to its run's partition; False if it was a duplicate."""
    ack = await js.publish(
        subject_of(command.run_id),
        encoder.encode(command),
        headers={MSG_ID: msg_id or msg_id_of(command)},
        timeout=10,
    )
    return not ack.duplicate


def decode_command(data: bytes) -> Command:
    try:
        return _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"invalid orchestrator command: {exc}") from exc
