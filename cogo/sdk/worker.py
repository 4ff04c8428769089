"""``cogo.Worker``: the base of class-based agents, for those a decorated function does not fit.

    class Keywords(cogo.Worker):
        route = "lexicon.keywords.0"

        async def run(self, order: WorkOrder, ctx: cogo.TaskContext) -> cogo.Outcome:
            return cogo.Outcome(result=top_words(ctx.payload["text"]))

The runtime runs a subclass by joining it with its worker runner (``cogo.runtime.worker``):
decoding the order, the timeout and the TTL, the result's fence and the retries stay out of
it. The attributes below are the runner's, set before ``on_start``.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from cogo.config import Config
from cogo.sdk.context import Outcome, TaskContext
from cogo.streams.artifacts import ArtifactStore
from cogo.streams.envelope import WorkOrder
from cogo.streams.events import EventLog


class Worker:
    """Base of class-based agents: set ``route``, implement ``run(order, ctx) -> Outcome``."""

    route: str = ""
    kind: str  # names its processes' actors (<kind>-<host>-<pid>); default: the agent's name
    # set by the runtime when it starts the worker
    name: str  # this process's actor id (``<kind>-<host>-<pid>``)
    version: str | None  # ``--version`` (a canary), None for the stable one
    config: Config
    nc: NATS
    js: JetStreamContext
    events: EventLog  # append events to the EVENTS stream
    artifacts: ArtifactStore  # the object store of artifacts (large step results)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # the runner's, next in the joined class

    async def on_start(self) -> None:
        """Hook run once before the first task (open buckets, load models, ...)."""

    async def on_stop(self) -> None:
        """Hook run once after the last task."""

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        """Run one attempt of ``order``; raise ``cogo.WorkerError`` (retried) or
        ``cogo.PermanentWorkerError`` (not retried) to fail it."""
        raise NotImplementedError
