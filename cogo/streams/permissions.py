"""Who may do what on NATS: the subjects each Cogo user may publish and subscribe to.

``permissions(user, plan)`` turns an ``AuthPlan`` (``cogo.streams.auth``) into one user's
``publish``/``subscribe`` allow (and deny) lists for nats.conf. Each helper below names one
capability as the JetStream API subjects it takes (pull one consumer, read a KV bucket, read
the event log, read one's own journal...), so a user's grant reads as a list of capabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cogo.streams.catalogue import CALL_COMPLETED, CALL_STARTED, TASK_SIGNALED
from cogo.streams.commands import CANCEL_SUBJECT
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    RESULT_SUBJECT,
    RESULTS_SUBJECT,
    RETRY_SUBJECT,
    result_subject,
)
from cogo.streams.outputs import OUTPUTS
from cogo.streams.routes import durable_name
from cogo.streams.schedule import SCHEDULE_SUBJECTS
from cogo.streams.topology import (
    ARTIFACT_BUCKET,
    CONTROL_VERSION,
    DLQ,
    EVENTS,
    FLOW,
    FLOW_BUCKET,
    LEASE_BUCKET,
    MAX_DELIVERIES_ADVISORY,
    ORCHESTRATOR_ROUTES,
    POLICY_BUCKET,
    RESULTS,
    SCHEDULE_BUCKET,
    STATUS_SUBJECT,
    SUSPENSION_BUCKET,
    TASKS,
)

if TYPE_CHECKING:
    from cogo.streams.auth import AuthPlan

API = "$JS.API"
# events any worker may append (the dispatcher owns execute_enqueued/retry/failed/done)
WORKER_EVENTS = (
    "execute_started",
    "artifact_stored",
    "code_file_indexed",
    "code_file_removed",
    "code_index_completed",
    "webhook_delivered",
    "llm_call",
    "step_completed",
)  # the agent runtime (cogo.sdk.llm, steps)
ARTIFACT_WRITERS = {"codegen", "build_test"}  # built-in kinds that store artifacts
PROJECTOR_CONSUMER_OPS = ("CONSUMER.DURABLE.CREATE", "CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE")


def inbox_prefix(user: str) -> str:
    """Where ``user`` receives replies: a private inbox prefix no other user may read."""
    return f"_INBOX_{user}"


def _consume(stream: str, consumer: str) -> list[str]:
    """Pull from and ack one durable consumer."""
    return [
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
        f"{API}.CONSUMER.INFO.{stream}.{consumer}",
    ]


def _read_kv(bucket: str) -> list[str]:
    """Read and watch a KV bucket (a watch is an ordered consumer with flow control)."""
    stream = f"KV_{bucket}"
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"$JS.FC.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
    ]


def _write_kv(bucket: str) -> list[str]:
    return [*_read_kv(bucket), f"$KV.{bucket}.>"]


def _objects(bucket: str, write: bool) -> list[str]:
    stream = f"OBJ_{bucket}"
    subjects = [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
    ]
    if write:  # no STREAM.PURGE: a purge's filter is in its body, so it could wipe them all
        subjects += [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]
    return subjects


def _read_events() -> list[str]:
    """Read the event log: ephemeral consumers and direct gets on EVENTS only."""
    return [
        f"{API}.STREAM.INFO.{EVENTS}",
        f"{API}.CONSUMER.CREATE.{EVENTS}",
        f"{API}.CONSUMER.CREATE.{EVENTS}.>",
        f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.>",
        f"{API}.CONSUMER.DELETE.{EVENTS}.>",
        f"{API}.CONSUMER.INFO.{EVENTS}.>",
        f"{API}.STREAM.MSG.GET.{EVENTS}",
        f"$JS.FC.{EVENTS}.>",
    ]


def _held_tasks() -> list[str]:
    """Hold tasks in ``FLOW``, follow a route's with an ordered consumer, delete admitted ones."""
    return [
        "flow.>",
        f"{API}.STREAM.INFO.{FLOW}",
        f"{API}.STREAM.MSG.DELETE.{FLOW}",
        f"{API}.CONSUMER.CREATE.{FLOW}",
        f"{API}.CONSUMER.CREATE.{FLOW}.>",
        f"{API}.CONSUMER.DELETE.{FLOW}.>",
        f"{API}.CONSUMER.INFO.{FLOW}.>",
        f"$JS.FC.{FLOW}.>",
    ]


def _read_outputs() -> list[str]:
    """Read tasks' output: ordered consumers on OUTPUTS, and its last message per task."""
    return [
        f"{API}.CONSUMER.CREATE.{OUTPUTS}",
        f"{API}.CONSUMER.CREATE.{OUTPUTS}.>",
        f"{API}.CONSUMER.DELETE.{OUTPUTS}.>",
        f"{API}.CONSUMER.INFO.{OUTPUTS}.>",
        f"{API}.STREAM.MSG.GET.{OUTPUTS}",
        f"$JS.FC.{OUTPUTS}.>",
        # a facade reads through pull consumers, a few chunks at a time (cogo.http.stream)
        f"{API}.CONSUMER.MSG.NEXT.{OUTPUTS}.>",
    ]


JOURNAL_TYPES = ("step_completed", TASK_SIGNALED, CALL_STARTED, CALL_COMPLETED)


def _read_journal(routes: Sequence[str], types: Sequence[str] = ("step_completed",)) -> list[str]:
    """Scan the journal of one's own routes (cogo.sdk.steps): a consumer is created with
    its one filter in the subject, so no other event can be read this way."""
    return [f"{API}.CONSUMER.CREATE.{EVENTS}.*.events.{t}.{route}.*" for t in types for route in routes]


def _events(*types: str) -> list[str]:
    return [s for t in types for s in (f"events.{t}", f"events.{t}.>")]


def _route_events(routes: Sequence[str], *types: str) -> list[str]:
    """Events of ``types`` about ``routes`` only: ``events.<type>.<route>[.>]``."""
    return [s for t in types for r in routes for s in (f"events.{t}.{r}", f"events.{t}.{r}.>")]


def permissions(user: str, plan: AuthPlan) -> dict[str, Any] | None:
    """The NATS permissions of ``user``; None means unrestricted (admin)."""
    if user == "admin":
        return None
    pub: list[str]
    sub = [f"{inbox_prefix(user)}.>"]
    extra: dict[str, Any] = {}
    deny: list[str] = []
    if user == "client":
        # RETRY_SUBJECT: signals and cancels (cogo.streams.commands); a retry sent there
        # counts only with the dispatcher's seal
        pub = [
            "orchestrator.execute.*",
            RETRY_SUBJECT,
            *_read_events(),
            *_read_kv(POLICY_BUCKET),
            STATUS_SUBJECT,
            *_read_outputs(),
        ]
        sub += ["events.>"]
    elif user == "dispatcher":
        routes = plan.task_routes
        pub = [
            *_consume(TASKS, durable_name(EXECUTE_SUBJECT)),
            *_consume(RESULTS, durable_name(RESULTS_SUBJECT)),
            *_consume(TASKS, durable_name(RESULT_SUBJECT)),  # reports of older workers
            *_consume(TASKS, durable_name(RETRY_SUBJECT)),
            *routes,
            *[f"{r}.*" for r in routes],  # baseline and versioned (canary) routes
            RETRY_SUBJECT,
            SCHEDULE_SUBJECTS,  # retries: due now, or as a message schedule
            *_events(
                "execute_enqueued",
                "execute_retry",
                "execute_failed",
                "execute_done",
                "execute_throttled",
                "policy_bypassed",
            ),
            "dlq.>",
            f"{API}.STREAM.MSG.GET.{TASKS}",
            f"{API}.STREAM.MSG.DELETE.{TASKS}",
            f"{API}.STREAM.MSG.GET.{RESULTS}",
            f"{API}.STREAM.MSG.DELETE.{RESULTS}",
            f"{API}.STREAM.PURGE.{RESULTS}",  # trimming what it handled (trim_results)
            "outputs.>",  # the end marker of a task's output, with its terminal event
            *_read_kv(POLICY_BUCKET),
            *_read_kv("rollouts"),
            # flow control: held tasks, admission leases and slots (cogo.runtime.flow.admission)
            *_held_tasks(),
            *_write_kv(FLOW_BUCKET),
            f"{API}.STREAM.PURGE.KV_{FLOW_BUCKET}",  # the slot log below a checkpoint
            # durable agents (cogo.runtime.suspension): suspended tasks' records, their
            # timers (message schedules on TASKS), the journal entries it writes, the cancel
            # it tells workers, the children a cancelled task started
            *_write_kv(SUSPENSION_BUCKET),
            SCHEDULE_SUBJECTS,
            *_events("execute_suspended", "execute_resumed", "execute_cancelled", "task_signaled", "call_completed"),
            CANCEL_SUBJECT,
            f"{API}.CONSUMER.CREATE.{EVENTS}.*.events.{CALL_STARTED}.>",
        ]
        sub += [f"{MAX_DELIVERIES_ADVISORY}.{TASKS}.*", f"{MAX_DELIVERIES_ADVISORY}.{RESULTS}.*"]
    elif user == "orchestrator":
        pub = [
            *_consume(EVENTS, "orchestrator-events"),
            f"{API}.CONSUMER.DURABLE.CREATE.{EVENTS}.orchestrator-events",
            f"{API}.CONSUMER.CREATE.{EVENTS}.orchestrator-events",
            f"{API}.CONSUMER.CREATE.{EVENTS}.orchestrator-events.>",
            # one command queue per partition of runs; it pulls those whose lease it holds,
            # and publishes to any (forwarded outcomes, child starts, scheduled runs)
            *[
                s
                for r in ORCHESTRATOR_ROUTES
                for s in (
                    *_consume(TASKS, durable_name(r)),
                    f"{API}.CONSUMER.DURABLE.CREATE.{TASKS}.{durable_name(r)}",
                    f"{API}.CONSUMER.CREATE.{TASKS}.{durable_name(r)}",
                    f"{API}.CONSUMER.CREATE.{TASKS}.{durable_name(r)}.>",
                )
            ],
            EXECUTE_SUBJECT,
            RETRY_SUBJECT,
            "orchestrator.workflow.*",
            "events.*.wf.>",  # every workflow event: events.<type>.wf.<workflowId>.<runId>
            *_read_events(),
            *_read_kv(POLICY_BUCKET),
            *_write_kv(LEASE_BUCKET),
            *_write_kv(SCHEDULE_BUCKET),
        ]
    elif user == "projector":
        pub = [
            *_read_events(),
            # its consumer is named for its node and data dir (projector-<host>-<hash>), and
            # NATS grants whole tokens only: any name on EVENTS, less the orchestrators' (deny)
            *[f"{API}.{op}.{EVENTS}.*" for op in PROJECTOR_CONSUMER_OPS],
            *[
                f"{API}.{op}.{DLQ}.>"
                for op in (
                    "CONSUMER.CREATE",
                    "CONSUMER.DURABLE.CREATE",
                    "CONSUMER.INFO",
                    "CONSUMER.DELETE",
                    "CONSUMER.MSG.NEXT",
                )
            ],
            f"{API}.CONSUMER.CREATE.{DLQ}",
            f"{API}.STREAM.INFO.{DLQ}",
            f"$JS.ACK.{EVENTS}.>",
            f"$JS.ACK.{DLQ}.>",
            f"$JS.FC.{DLQ}.>",
        ]
        sub += [STATUS_SUBJECT]
        extra["allow_responses"] = True  # answer status requests on the requester's inbox
        deny = [f"{API}.{op}.{EVENTS}.orchestrator-events" for op in PROJECTOR_CONSUMER_OPS]
    elif user in plan.workers:
        own = plan.workers[user]
        pub = []
        # an app speaks for its own routes only; Cogo's built-in kinds (indexer events name
        # no route) keep the event types they append
        events = _route_events(own, *WORKER_EVENTS) if user.startswith("app-") else _events(*WORKER_EVENTS)
        # no STREAM.INFO.TASKS nor STREAM.NAMES: nothing a worker runs needs them
        sub += [CANCEL_SUBJECT]  # a cancelled task's running handler is stopped
        journal: Sequence[str] = ("step_completed",)
        if user.startswith("app-"):
            # durable agents (cogo.sdk.durable): ctx.call submits a child and journals
            # it on its own route's subject, reading the child route's policy and whether a
            # cancel reached it; a run reads its own routes' signals and calls (a consumer
            # per subject, its filter in the request's subject) and hears its own routes'
            # signals and children's ends, no other's
            events += _route_events(own, CALL_STARTED)
            journal = JOURNAL_TYPES
            pub += [EXECUTE_SUBJECT, *_read_kv(POLICY_BUCKET), *_read_kv(SUSPENSION_BUCKET)]
            sub += [f"events.{t}.{r}.*" for t in (TASK_SIGNALED, CALL_COMPLETED) for r in own]
        pub += [
            *[result_subject(r) for r in own],
            *events,
            f"{CONTROL_VERSION}.{user}",
            "outputs.>",  # ctx.emit: readers show only chunks with the task's MAC
            *_read_journal(own, journal),
        ]
        for route in [*plan.workers[user], *plan.versions.get(user, [])]:
            pub += _consume(TASKS, durable_name(route))
        if user in ARTIFACT_WRITERS or user.startswith("app-"):
            pub += _objects(ARTIFACT_BUCKET, write=True)
        if user == "indexer":
            pub += [*_write_kv("code_index"), f"{API}.STREAM.CREATE.KV_code_index"]
    else:
        raise KeyError(user)
    publish: dict[str, list[str]] = {"allow": pub, **({"deny": deny} if deny else {})}
    return {"publish": publish, "subscribe": {"allow": sub}, **extra}
