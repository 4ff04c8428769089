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

The cluster's shape belongs to the cluster: ``[bus] replicas`` applies only to what a process
creates. A stream or consumer that exists keeps its replica count, whatever the local
configuration says (a worker started without ``--config`` once re-declared every stream of a
3-node cluster at 1 replica, and the loss of one host then lost acknowledged data); the
process warns, naming both values. A new consumer takes its stream's count, never more
(JetStream refuses a consumer with more replicas than its stream). Only ``set_replicas``
(``cogo cluster replicas N``) changes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from cogo.config import Config
from cogo.errors import ConfigError
from cogo.streams import outputs
from cogo.streams.envelope import (
    EXECUTE_SUBJECT,
    RESULT_SUBJECT,
    RESULTS_PREFIX,
    RESULTS_SUBJECT,
    RETRY_SUBJECT,
)
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
# (cogo.runtime.suspension)
SUSPENSION_BUCKET = "suspensions"
# consumers EVENTS may have at once (see stream_configs)
EVENTS_MAX_CONSUMERS = 100_000
DISPATCHER_ROUTES = [EXECUTE_SUBJECT, RESULT_SUBJECT, RETRY_SUBJECT]
# RESULTS: the shared subject of workers before per-route results, and one per route
RESULTS_SUBJECTS = [RESULTS_SUBJECT, f"{RESULTS_PREFIX}.>"]
# the workflow orchestrator's commands, one subject per partition of runs; not task routes
ORCHESTRATOR_PARTITIONS = 8
ORCHESTRATOR_ROUTES = [f"orchestrator.workflow.{p}" for p in range(ORCHESTRATOR_PARTITIONS)]
FIXED_ROUTES = [*DISPATCHER_ROUTES, *ORCHESTRATOR_ROUTES]
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
# core NATS request/reply subjects (in no stream)
STATUS_SUBJECT = "cogo.tasks.status"  # a task's status, answered by the projector
CONTROL_VERSION = "cogo.control.version"  # + .<user>: ask `cogo up --auth` for a version

__all__ = ["durable_name"]  # re-exported: callers have always found it here

log = logging.getLogger(__name__)
# (kind, name, kept, wanted) already warned about by this process: once each, not per declare
_warned: set[tuple[str, str, int, int]] = set()


def stream_of(route: str) -> str:
    """The stream a route's consumer reads: ``RESULTS`` for workers' reports, else ``TASKS``."""
    return RESULTS if route == RESULTS_SUBJECT else TASKS


def orchestrator_route(partition: int) -> str:
    """The command subject of one partition of workflow runs."""
    return ORCHESTRATOR_ROUTES[partition]


def stream_configs(config: Config, task_subjects: list[str] | None = None) -> list[api.StreamConfig]:
    """The streams; ``task_subjects`` are the subjects ``TASKS`` is created with."""
    replicas = config.bus.replicas
    window = config.bus.duplicate_window_s
    return [
        api.StreamConfig(
            name=TASKS,
            description="commands for actors (work queue)",
            subjects=[
                *(task_subjects or [s for r in FIXED_ROUTES for s in route_subjects(r)]),
                SCHEDULE_SUBJECTS,
            ],
            retention=api.RetentionPolicy.WORK_QUEUE,
            # the dispatcher's held retries and durable agents' timers (ctx.sleep, signal
            # timeouts, the ttl of suspended tasks) wait as schedules, not in a consumer
            allow_msg_schedules=True,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
            # message schedules refuse `discard: new`. TASKS sets no limits, so nothing is
            # ever discarded; a full store refuses writes, and should an operator set
            # max_bytes, submissions are refused before it fills (cogo.streams.capacity)
            discard=api.DiscardPolicy.OLD,
        ),
        api.StreamConfig(
            name=RESULTS,
            description="workers' reports to the dispatcher (trimmed below its ack floor)",
            subjects=RESULTS_SUBJECTS,
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
            # every journal read is a short-lived consumer (cogo.sdk.steps): durable agents
            # resume by the hundred, and nats-server caps a stream left at -1 at 1,000
            max_consumers=EVENTS_MAX_CONSUMERS,
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
# "consumer config replica count exceeds parent stream"
CONSUMER_EXCEEDS_STREAM = 10126


def consumer_config(route: str, config: Config) -> api.ConsumerConfig:
    """The durable pull consumer of one route (the dispatcher's results: every route's)."""
    results = route == RESULTS_SUBJECT
    return api.ConsumerConfig(
        durable_name=durable_name(route),
        description=f"cogo route {route}",
        filter_subject=None if results else route,
        filter_subjects=RESULTS_SUBJECTS if results else None,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=config.bus.ack_wait_s,
        # a run's command is never given up on (a lease moving can redeliver it)
        max_deliver=-1 if route in ORCHESTRATOR_ROUTES else config.bus.max_deliver,
        max_ack_pending=config.bus.max_ack_pending,
        max_waiting=512,
        num_replicas=config.bus.replicas,
    )


async def ensure_topology(js: JetStreamContext, config: Config, routes: list[str] | None = None) -> None:
    """Create or update the streams and the KV/object buckets; with ``routes``, also give
    each its ``TASKS`` subjects and its consumer (what ``cogo.streams.routes`` declares)."""
    subjects = [s for r in routes or FIXED_ROUTES if stream_of(r) == TASKS for s in route_subjects(r)]
    for cfg in stream_configs(config, subjects):
        try:
            info = await js.stream_info(cfg.name)  # type: ignore[arg-type]
        except NotFoundError:
            try:
                await js.add_stream(cfg)
                continue
            except APIError as exc:
                if "insufficient" in (exc.description or ""):  # no node can reserve max_bytes
                    raise insufficient_storage(exc, str(cfg.name), config) from None
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                # a concurrent declarer created it a moment ago: update it like any other
                info = await js.stream_info(cfg.name)  # type: ignore[arg-type]
        # keep the subjects the stream has: other apps' routes are among them
        kept = list(info.config.subjects or [])
        cfg.subjects = kept + [s for s in cfg.subjects or [] if s not in kept and cfg.name != TASKS]
        # and its replicas: the cluster's shape is not this process's to change
        cfg.num_replicas = kept_replicas("stream", str(cfg.name), info.config.num_replicas, config.bus.replicas)
        await js.update_stream(cfg)
    # held retries (and durable timers) wait as schedules on TASKS
    await ensure_subjects(js, TASKS, [SCHEDULE_SUBJECTS, *route_subjects(RETRY_SUBJECT)])
    await ensure_consumer(js, RESULTS_SUBJECT, config)
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
    await allow_msg_ttl(js, f"KV_{SUSPENSION_BUCKET}")  # notes expire (cogo.runtime.suspension)
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
                bucket=bucket,
                history=history,
                replicas=replicas,
                description=description,
                storage=api.StorageType.FILE,
            )
        )


async def allow_msg_ttl(js: JetStreamContext, stream: str) -> None:
    """Let ``stream`` take per-message TTLs (``Nats-TTL``, nats-server 2.11+); switched on in
    place on a store made before."""
    info = await js.stream_info(stream)
    if not info.config.allow_msg_ttl:
        await js.update_stream(dataclasses.replace(info.config, allow_msg_ttl=True))


def kept_replicas(kind: str, name: str, existing: int | None, wanted: int) -> int:
    """The replicas an existing stream or consumer keeps (its own), warning once if the local
    configuration wanted another count."""
    have = int(existing or 1)
    if have != wanted and (kind, name, have, wanted) not in _warned:
        _warned.add((kind, name, have, wanted))
        log.warning(
            "%s %s has %d replica(s); this process's configuration says %d ([bus] replicas): "
            "keeping %d (the cluster's shape changes only with `cogo cluster replicas N`)",
            kind,
            name,
            have,
            wanted,
            have,
        )
    return have


async def add_consumer_keeping_shape(
    js: JetStreamContext, stream: str, cfg: api.ConsumerConfig, wanted: int
) -> api.ConsumerInfo:
    """Create ``cfg``'s durable consumer on ``stream``, or update it in place, with the replica
    count the cluster already has: an existing consumer keeps its own, a new one takes its
    stream's (``wanted``, the local configuration's, only decides the warning)."""
    name = cfg.durable_name or cfg.name
    assert name is not None
    try:
        info = await js.consumer_info(stream, name)
        cfg.num_replicas = kept_replicas("consumer", f"{stream}/{name}", info.config.num_replicas or None, wanted)
    except NotFoundError:
        stream_info = await js.stream_info(stream)
        cfg.num_replicas = int(stream_info.config.num_replicas or 1)
    # add_consumer with an existing durable name updates its mutable fields
    return await js.add_consumer(stream, cfg)


async def ensure_consumer(js: JetStreamContext, route: str, config: Config) -> None:
    """Create the route's durable consumer, or update it in place if it exists (its replicas
    stay as the cluster has them: ``add_consumer_keeping_shape``)."""
    cfg = consumer_config(route, config)
    await add_consumer_keeping_shape(js, stream_of(route), cfg, config.bus.replicas)


async def set_replicas(js: JetStreamContext, replicas: int) -> list[str]:
    """Change every Cogo stream, KV and object bucket, and every durable consumer on them, to
    ``replicas`` (``cogo cluster replicas N``, the one way to change the cluster's shape).

    Raising: streams first, then their consumers; lowering: consumers first, since JetStream
    refuses a consumer with more replicas than its stream (except on a work-queue stream, whose
    consumers must always match it: the stream first). Returns what changed, one line each.
    """
    if not 1 <= replicas <= 5:
        raise ValueError("replicas must be between 1 and 5 (JetStream's limit)")
    buckets = [POLICY_BUCKET, ROLLOUT_BUCKET, LEASE_BUCKET, SCHEDULE_BUCKET, FLOW_BUCKET, "code_index"]
    ours = {TASKS, RESULTS, EVENTS, DLQ, FLOW, outputs.OUTPUTS, f"OBJ_{ARTIFACT_BUCKET}", *(f"KV_{b}" for b in buckets)}
    streams = [info.config.name for info in await _streams_info(js) if info.config.name in ours]
    changed: list[str] = []

    async def consumers(stream: str) -> None:
        for info in await js.consumers_info(stream):
            cfg = info.config
            # ephemeral and in-memory consumers are not part of the shape
            if not cfg.durable_name or cfg.mem_storage:
                continue
            if int(cfg.num_replicas or 0) in (0, replicas):
                continue
            before = cfg.num_replicas
            cfg.num_replicas = replicas
            for attempt in range(50):
                try:
                    await js.add_consumer(stream, cfg)
                    break
                except BadRequestError as exc:
                    # the stream's new size reaches its peers a moment after its update
                    if exc.err_code != CONSUMER_EXCEEDS_STREAM or attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
            changed.append(f"consumer {stream}/{cfg.durable_name}: {before} -> {replicas}")

    for name in streams:
        assert name is not None
        info = await js.stream_info(name)
        before = int(info.config.num_replicas or 1)
        # a work-queue stream's consumers must match it at all times: the stream goes first
        limits = info.config.retention in (None, api.RetentionPolicy.LIMITS)
        if replicas < before and limits:
            await consumers(name)
        if before != replicas:
            cfg = info.config
            cfg.num_replicas = replicas
            await js.update_stream(cfg)
            changed.append(f"stream {name}: {before} -> {replicas}")
            # its consumers may only follow once the stream has its new peers
            await _wait_settled(js, [name], replicas, consumers=False)
        if replicas > before or not limits:
            await consumers(name)
    if changed:
        await _wait_settled(js, [n for n in streams if n], replicas)
    return changed


async def _wait_settled(
    js: JetStreamContext,
    streams: list[str],
    replicas: int,
    *,
    consumers: bool = True,
    timeout: float = 120.0,
) -> None:
    """Wait until every stream and durable consumer of ``streams`` has a leader and exactly
    ``replicas`` peers: a shape change moves RAFT groups, and until they settle requests to
    them time out."""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = list(streams)
    while pending:
        name = pending[0]
        try:
            if await _group_settled(js, name, replicas, consumers=consumers):
                pending.pop(0)
                continue
        except (NatsTimeout, TimeoutError, ServiceUnavailableError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"stream {name} did not settle at {replicas} replica(s) in time")
        await asyncio.sleep(0.25)


async def _group_settled(js: JetStreamContext, stream: str, replicas: int, *, consumers: bool) -> bool:
    groups: list[api.ClusterInfo | None] = [(await js.stream_info(stream)).cluster]
    for info in await js.consumers_info(stream) if consumers else []:
        if info.config.durable_name and not info.config.mem_storage:
            groups.append(info.cluster)
    return all(
        group is None  # a single server: nothing to elect
        or (bool(group.leader) and len(group.replicas or []) + 1 == replicas)
        for group in groups
    )


async def _streams_info(js: JetStreamContext) -> list[api.StreamInfo]:
    out: list[api.StreamInfo] = []
    while True:
        page = await js.streams_info(offset=len(out))
        out.extend(page)
        if len(page) < 256:  # the server's page size
            return out


async def results_floor(js: JetStreamContext) -> int:
    """The ack floor of the dispatcher's ``RESULTS`` consumer: every report at or below it was
    handled (acked, terminated, or given up on after ``max_deliver``, which the server
    announces first: ``cogo.runtime.deadletter``)."""
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


# -- store sizing: what the streams reserve on a node -------------------------------------

# what one node keeps free beyond the reservations: TASKS, RESULTS and FLOW have no
# max_bytes (they refuse work when the store is full), and the KV buckets live here too
HEADROOM_BYTES = 2 * 1024**3


def human(size: int) -> str:
    """A byte count as an operator writes it (``10GB``, ``1.5GB``)."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = 1024 ** (" KMGT".index(unit[0]))
        if size >= scale:
            return f"{size / scale:.1f}{unit}".replace(".0", "")
    return f"{size}B"


def reserved_bytes(config: Config) -> dict[str, int]:
    """What each of Cogo's streams reserves on every node holding a replica (its max_bytes)."""
    return {str(c.name): int(c.max_bytes) for c in stream_configs(config) if c.max_bytes and c.max_bytes > 0}


def insufficient_storage(exc: Exception, stream: str, config: Config) -> ConfigError:
    """The clear error for the server's ``insufficient storage`` when placing ``stream``."""
    reserved = reserved_bytes(config)
    return ConfigError(
        f"the cluster has no room for stream {stream} ({exc}): Cogo's streams reserve "
        f"{human(sum(reserved.values()))} on each node holding a replica "
        f"({', '.join(f'{n} {human(b)}' for n, b in reserved.items())}); raise the nodes' "
        f"jetstream max_file_store to at least {human(sum(reserved.values()) + HEADROOM_BYTES)} "
        "(`cogo cluster config --store-size`), or lower [events] / [dlq] / [outputs] max_bytes"
    )
