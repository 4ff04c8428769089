"""JetStream topology: the streams, the durable consumer of every route, the KV buckets.

Streams: ``TASKS`` (work queue: commands for actors, one subject per route), ``RESULTS``
(workers' reports to the dispatcher, ``orchestrator.results.0``), ``EVENTS`` (the event
log), ``DLQ`` (dead letters), ``FLOW`` (tasks held back by flow control) and ``OUTPUTS``
(what tasks emit). ``RESULTS`` has limits retention, not work-queue: acknowledging a result
removes nothing, which with ``sync_interval: always`` saves the fsynced removal record a
work-queue ack writes; the dispatcher trims it below its consumer's ack floor instead, in
one purge every few seconds (``trim_results``), and ``[bus] results_max_age_s`` is only a
backstop.

``ensure_topology`` is idempotent: it creates what is missing and updates what changed,
never deleting data, so ``cogo up`` twice on one data dir keeps every event. Which routes
exist is not fixed here: apps declare them (``cogo.streams.routes``), and ``TASKS`` keeps
the subjects of every route ever declared.
"""

from __future__ import annotations

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from cogo.config import Config
from cogo.streams import outputs
from cogo.streams.envelope import EXECUTE_SUBJECT, RESULT_SUBJECT, RESULTS_SUBJECT
from cogo.streams.routes import durable_name, ensure_subjects, route_subjects
from cogo.streams.schedule import SCHEDULE_SUBJECTS

TASKS = "TASKS"
RESULTS = "RESULTS"
EVENTS = "EVENTS"
DLQ = "DLQ"
# tasks flow control holds back, one subject per route, priority and key (cogo.streams.flow)
FLOW = "FLOW"
POLICY_BUCKET = "policies"
ARTIFACT_BUCKET = "artifacts"
ROLLOUT_BUCKET = "rollouts"
# who drives which partition of workflow runs (leases with per-key TTL; cogo.streams.leases)
LEASE_BUCKET = "orchestrator_leases"
# workflow schedules and where each one's ticks stand (cogo.workflows.schedules)
SCHEDULE_BUCKET = "schedules"
# flow control: admission leases, the slots running attempts hold, what each admitter sees
FLOW_BUCKET = "flow"
# durable agents: what each suspended task waits for, and what arrived while it ran
# (cogo.actors.suspension)
SUSPENSION_BUCKET = "suspensions"
DISPATCHER_ROUTES = [EXECUTE_SUBJECT, RESULT_SUBJECT]
# the workflow orchestrator's commands, one subject per partition of runs; not task routes
ORCHESTRATOR_PARTITIONS = 8
ORCHESTRATOR_ROUTES = [f"orchestrator.workflow.{p}" for p in range(ORCHESTRATOR_PARTITIONS)]
FIXED_ROUTES = [*DISPATCHER_ROUTES, *ORCHESTRATOR_ROUTES]
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
# core NATS request/reply subjects (in no stream)
STATUS_SUBJECT = "cogo.tasks.status"  # a task's status, answered by the projector
CONTROL_VERSION = "cogo.control.version"  # + .<user>: ask `cogo up --auth` for a version

__all__ = ["durable_name"]  # re-exported: callers have always found it here


def stream_of(route: str) -> str:
    """The stream a route's consumer reads: ``RESULTS`` for workers' reports, else ``TASKS``."""
    return RESULTS if route == RESULTS_SUBJECT else TASKS


def orchestrator_route(partition: int) -> str:
    """The command subject of one partition of workflow runs."""
    return ORCHESTRATOR_ROUTES[partition]


def stream_configs(
    config: Config, task_subjects: list[str] | None = None
) -> list[api.StreamConfig]:
    """The streams; ``task_subjects`` are the subjects ``TASKS`` is created with."""
    replicas = config.bus.replicas
    window = config.bus.duplicate_window_s
    return [
        api.StreamConfig(
            name=TASKS,
            description="commands for actors (work queue)",
            subjects=(task_subjects or [s for r in FIXED_ROUTES for s in route_subjects(r)])
            + [SCHEDULE_SUBJECTS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            # timers of durable agents (ctx.sleep, wait_signal timeouts, ttl of suspended
            # tasks) are messages the server publishes later (cogo.streams.schedule)
            allow_msg_schedules=True,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
            # the server refuses message schedules on a `discard: new` stream; TASKS sets no
            # max_msgs / max_bytes, so there is nothing it would discard: a full store (the
            # account's limit) refuses new work either way, never dropping queued work
            discard=api.DiscardPolicy.OLD,
        ),
        api.StreamConfig(
            name=RESULTS,
            description="workers' reports to the dispatcher (trimmed below its ack floor)",
            subjects=[RESULTS_SUBJECT],
            # limits, not work-queue: an ack writes no removal record (see the docstring)
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            # fences a worker reporting one attempt twice (Nats-Msg-Id <task>:<attempt>:result)
            duplicate_window=window,
            # a backstop only: an unread result this old is dropped, so it must outlast any
            # dispatcher outage; trim_results keeps the stream small meanwhile
            max_age=config.bus.results_max_age_s,
            # refuse a report rather than drop an unread one: the worker naks and retries
            discard=api.DiscardPolicy.NEW,
        ),
        api.StreamConfig(
            name=EVENTS,
            description="the event log: source of truth",
            subjects=["events.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
            max_age=config.events.max_age_s,
            max_bytes=config.events.max_bytes,
            # a full log refuses writes (callers see an error) instead of dropping history
            discard=api.DiscardPolicy.NEW,
        ),
        api.StreamConfig(
            name=DLQ,
            description="dead letters with their reason",
            subjects=["dlq.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
            max_age=config.dlq.max_age_s,
            max_bytes=config.dlq.max_bytes,
        ),
        api.StreamConfig(
            name=FLOW,
            description="tasks held back by flow control, by route, priority and key",
            subjects=["flow.>"],
            # a held task leaves when it is admitted (or expires): deleted by its admitter.
            # No age limit: a held task ends only as an event, never by silently aging out
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
            discard=api.DiscardPolicy.NEW,
        ),
        outputs.stream_config(config),
    ]


# "stream name already in use with a different configuration"
STREAM_NAME_IN_USE = 10058


def consumer_config(route: str, config: Config) -> api.ConsumerConfig:
    """The durable pull consumer of one route."""
    return api.ConsumerConfig(
        durable_name=durable_name(route),
        description=f"cogo route {route}",
        filter_subject=route,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=config.bus.ack_wait_s,
        # a run's command is never given up on (a lease moving can redeliver it)
        max_deliver=-1 if route in ORCHESTRATOR_ROUTES else config.bus.max_deliver,
        max_ack_pending=config.bus.max_ack_pending,
        max_waiting=512,
        num_replicas=config.bus.replicas,
    )


async def ensure_topology(
    js: JetStreamContext, config: Config, routes: list[str] | None = None
) -> None:
    """Create or update the streams and the KV/object buckets; with ``routes``, also give
    each its ``TASKS`` subjects and its consumer (what ``cogo.streams.routes`` declares)."""
    subjects = [s for r in routes or FIXED_ROUTES if stream_of(r) == TASKS
                for s in route_subjects(r)]  # fmt: skip
    for cfg in stream_configs(config, subjects):
        try:
            info = await js.stream_info(cfg.name)  # type: ignore[arg-type]
        except NotFoundError:
            try:
                await js.add_stream(cfg)
                continue
            except BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                # a concurrent declarer created it a moment ago: update it like any other
                info = await js.stream_info(cfg.name)  # type: ignore[arg-type]
        # keep the subjects the stream has: other apps' routes are among them
        cfg.subjects = info.config.subjects
        await js.update_stream(cfg)
    await ensure_consumer(js, RESULTS_SUBJECT, config)
    await ensure_subjects(js, TASKS, [SCHEDULE_SUBJECTS])
    if routes:
        task_routes = [r for r in routes if stream_of(r) == TASKS]
        await ensure_subjects(js, TASKS, [s for r in task_routes for s in route_subjects(r)])
        for route in task_routes:
            await ensure_consumer(js, route, config)
    await ensure_kv(js, POLICY_BUCKET, history=16, replicas=config.bus.replicas)
    # created here by the admin connection: dispatchers only watch it
    await ensure_kv(js, ROLLOUT_BUCKET, history=8, replicas=config.bus.replicas)
    await ensure_kv(js, LEASE_BUCKET, history=1, replicas=config.bus.replicas)
    await ensure_kv(js, SCHEDULE_BUCKET, history=4, replicas=config.bus.replicas)
    await ensure_kv(js, FLOW_BUCKET, history=1, replicas=config.bus.replicas)
    await ensure_kv(js, SUSPENSION_BUCKET, history=1, replicas=config.bus.replicas)
    try:
        await js.object_store(ARTIFACT_BUCKET)
    except (NotFoundError, BadRequestError):
        await js.create_object_store(
            ARTIFACT_BUCKET,
            api.ObjectStoreConfig(replicas=config.bus.replicas, storage=api.StorageType.FILE),
        )


async def ensure_kv(
    js: JetStreamContext,
    bucket: str,
    *,
    history: int,
    replicas: int,
    description: str | None = None,
) -> KeyValue:
    """The KV ``bucket``, created (file storage) if missing."""
    try:
        return await js.key_value(bucket)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket, history=history, replicas=replicas, description=description,
                storage=api.StorageType.FILE,
            )
        )  # fmt: skip


async def ensure_consumer(js: JetStreamContext, route: str, config: Config) -> None:
    """Create the route's durable consumer, or update it in place if it exists."""
    cfg = consumer_config(route, config)
    # add_consumer with an existing durable name updates its mutable fields
    await js.add_consumer(stream_of(route), cfg)


async def results_floor(js: JetStreamContext) -> int:
    """The ack floor of the dispatcher's ``RESULTS`` consumer: every report at or below it was
    handled (acked, terminated, or given up on after ``max_deliver``, which the server
    announces first: ``cogo.actors.deadletter``)."""
    info = await js.consumer_info(RESULTS, durable_name(RESULTS_SUBJECT))
    return int(info.ack_floor.stream_seq) if info.ack_floor else 0


async def trim_results(js: JetStreamContext, upto: int) -> None:
    """Purge ``RESULTS`` up to and including ``upto`` (a floor ``results_floor`` gave).

    One purge whatever the number of results, instead of the removal record per ack that a
    work-queue stream writes (and, with ``sync_interval: always``, fsyncs) per task."""
    # purge seq=N removes every message below N
    await js.purge_stream(RESULTS, seq=upto + 1)


async def task_consumers(js: JetStreamContext) -> list[api.ConsumerInfo]:
    """Every consumer of ``TASKS`` (one per declared route, plus versioned ones), by route."""
    out: list[api.ConsumerInfo] = []
    while True:
        page = await js.consumers_info(TASKS, offset=len(out) or None)
        out.extend(page)
        if len(page) < 256:  # the server's page size
            break
    return sorted(out, key=lambda info: info.config.filter_subject or info.name)
