"""Partition leases: which orchestrator drives which runs, kept in JetStream KV.

Runs are split into partitions (``cogo.workflows.inbox``); an orchestrator drives the
runs of the partitions it holds a lease on. A lease is the KV key ``partition.<p>`` in
``orchestrator_leases``, written with compare-and-set (``Nats-Expected-Last-Subject-
Sequence``) and a per-message TTL (``Nats-TTL``, the server's clock, not ours):

- acquire: create the key (fails if anybody holds it);
- renew: every ``min(ttl / 3, 2 s)``, rewrite it expecting our own last revision (fails if it
  expired and somebody else took it);
- expire: a holder that stops renewing (killed, paused, cut off) loses the key after
  ``ttl`` by itself, and another member creates it;
- release: on a graceful stop or a rebalance, delete it expecting our revision, after the
  partition's work has drained.

Each member also keeps ``member.<id>`` alive (same TTL) so the others know how many share
the partitions: a member holds at most ``ceil(partitions / members)`` while another member
holds fewer, and takes a free partition at once while under its share, or after it stayed
free for two rounds (nobody under their share wanted it).

A lease is *valid* here until ``renewal start + ttl - margin`` on our monotonic clock,
which is before the server lets it expire: the orchestrator acks a message of a partition
only while its lease is valid, so when a lease moves, every input the old holder did not
finish is redelivered to the new one, which loads the partition's runs from the log only
after the old lease expired or was released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from cogo.aio import cancel_and_wait
from cogo.streams.topology import LEASE_BUCKET

log = logging.getLogger(__name__)

EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
TTL_HEADER = "Nats-TTL"
WRONG_LAST_SEQUENCE = (10071, 10164)
Partitions = Callable[[list[int]], Awaitable[None]]


def member_key(name: str) -> str:
    """A KV-safe key for a member named ``kind@host:pid``."""
    return "member." + re.sub(r"[^-_A-Za-z0-9]", "-", name)


class Lease:
    """One key held with compare-and-set and a TTL."""

    def __init__(
        self, kv: KeyValue, js: JetStreamContext, key: str, value: bytes, ttl_s: int, *, bucket: str = LEASE_BUCKET
    ) -> None:
        self.kv, self.js, self.key, self.value, self.ttl_s = kv, js, key, value, ttl_s
        self.bucket = bucket
        self.revision: int | None = None
        self.valid_until = 0.0
        self._margin = min(1.0, ttl_s * 0.2)

    def valid(self) -> bool:
        """Held, and certainly not yet expired on the server."""
        return self.revision is not None and time.monotonic() < self.valid_until

    async def acquire(self) -> bool:
        """Create the key; False if somebody holds it."""
        began = time.monotonic()
        try:
            self.revision = await self.kv.create(self.key, self.value, msg_ttl=self.ttl_s)
        except KeyWrongLastSequenceError:
            return False
        self.valid_until = began + self.ttl_s - self._margin
        return True

    async def renew(self) -> bool:
        """Rewrite the key expecting our revision; False (and no longer held) if it moved."""
        if self.revision is None:
            return False
        began = time.monotonic()
        try:
            ack = await self.js.publish(
                f"$KV.{self.bucket}.{self.key}",
                self.value,
                timeout=max(1.0, self.ttl_s / 3),
                headers={EXPECTED_LAST: str(self.revision), TTL_HEADER: f"{self.ttl_s}s"},
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                self.revision = None
                return False
            raise
        self.revision = ack.seq
        self.valid_until = began + self.ttl_s - self._margin
        return True

    async def release(self) -> None:
        """Delete the key if it is still ours."""
        revision, self.revision = self.revision, None
        if revision is not None:
            with contextlib.suppress(nats.errors.Error):
                await self.kv.delete(self.key, last=revision)


class PartitionLeases:
    """The partitions this process holds; ``on_gain`` / ``on_release`` / ``on_lost`` tell the
    orchestrator to load, drain or drop their runs."""

    def __init__(
        self,
        js: JetStreamContext,
        name: str,
        partitions: int,
        ttl_s: float,
        *,
        on_gain: Partitions,
        on_release: Partitions,
        on_lost: Partitions,
        bucket: str = LEASE_BUCKET,
    ) -> None:
        self.js = js
        self.bucket = bucket  # the orchestrators'; flow control leases its own (cogo.streams.flow)
        self.name = name
        self.member = member_key(name)
        self.partitions = partitions
        self.ttl_s = max(1, math.ceil(ttl_s))  # Nats-TTL has whole seconds
        self.on_gain, self.on_release, self.on_lost = on_gain, on_release, on_lost
        self.held: dict[int, Lease] = {}
        self.releasing: set[int] = set()
        self.counters: dict[str, int] = {"gained": 0, "released": 0, "lost": 0}
        self._free_rounds: dict[int, int] = {}
        self._members: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None
        self._value = json.dumps({"owner": name, "member": self.member}).encode()
        self._stopping = False

    @property
    def tick_s(self) -> float:
        # renew well inside the TTL; with a long TTL, still balance within a few seconds
        return min(self.ttl_s / 3, 2.0)

    def valid(self, partition: int) -> bool:
        lease = self.held.get(partition)
        return lease is not None and lease.valid()

    async def start(self) -> None:
        self._kv = await self.js.key_value(self.bucket)
        self._watch = asyncio.create_task(self._watch_members(), name="lease-members")
        await self._tick()  # take what is free now, before the first input arrives
        self._loop = asyncio.create_task(self._run(), name="leases")

    async def stop(self) -> None:
        """Drain and release every partition (others take them at once), then stop."""
        self._stopping = True
        await cancel_and_wait([self._loop, self._watch])
        await asyncio.gather(*self._tasks, return_exceptions=True)
        held = sorted(self.held)
        if held:
            keeper = asyncio.create_task(self._keep_renewing())
            try:
                await self.on_release(held)
            finally:
                await cancel_and_wait([keeper])
            for partition in held:
                await self.held.pop(partition).release()
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.member)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.tick_s)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus is away for a moment; leases lapse safely
                log.warning("%s: lease round failed: %s", self.name, exc)

    async def _keep_renewing(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            with contextlib.suppress(Exception):
                await self._renew()

    async def _tick(self) -> None:
        assert self._kv is not None
        await self.js.publish(
            f"$KV.{self.bucket}.{self.member}", self._value, headers={TTL_HEADER: f"{self.ttl_s}s"}, timeout=5
        )
        await self._renew()
        owners = await self._owners()
        alive = self._alive()
        fair = math.ceil(self.partitions / max(1, len(alive)))
        mine = [p for p in self.held if p not in self.releasing]
        load = {m: sum(1 for o in owners.values() if o == m) for m in alive}
        starving = any(n < fair for m, n in load.items() if m != self.member)
        if len(mine) > fair and starving:
            extra = sorted(mine)[fair:]
            self.releasing.update(extra)
            self._spawn(self._release(extra))
            return
        gained: list[int] = []
        for partition in range(self.partitions):
            if owners.get(partition) is not None or partition in self.held:
                self._free_rounds.pop(partition, None)
                continue
            rounds = self._free_rounds[partition] = self._free_rounds.get(partition, 0) + 1
            if len(mine) + len(gained) >= fair and rounds < 3:
                continue  # leave it to a member under its share for a round or two
            lease = Lease(self._kv, self.js, f"partition.{partition}", self._value, self.ttl_s, bucket=self.bucket)
            if await lease.acquire():
                self.held[partition] = lease
                gained.append(partition)
        if gained:
            self.counters["gained"] += len(gained)
            log.info("%s took partitions %s", self.name, gained)
            self._spawn(self.on_gain(gained))

    async def _renew(self) -> None:
        lost = []
        for partition, lease in list(self.held.items()):
            try:
                ok = await lease.renew()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("%s: renewing partition %d failed: %s", self.name, partition, exc)
                ok = lease.valid()  # try again next round while it still counts
            if not ok:
                lost.append(partition)
                del self.held[partition]
        if lost:
            self.counters["lost"] += len(lost)
            log.warning("%s lost partitions %s", self.name, lost)
            self._spawn(self.on_lost(lost))

    async def _release(self, partitions: list[int]) -> None:
        try:
            await self.on_release(partitions)
        finally:
            for partition in partitions:
                lease = self.held.pop(partition, None)
                if lease is not None:
                    await lease.release()
                self.releasing.discard(partition)
            self.counters["released"] += len(partitions)
            log.info("%s released partitions %s", self.name, partitions)

    async def _owners(self) -> dict[int, str | None]:
        """The member holding each partition (None: free), read from the bucket."""
        assert self._kv is not None
        kv = self._kv

        async def owner(partition: int) -> str | None:
            try:
                entry = await kv.get(f"partition.{partition}")
            except (KeyNotFoundError, NotFoundError):
                return None
            try:
                return str(json.loads(entry.value or b"{}").get("member"))
            except ValueError:
                return "?"

        found = await asyncio.gather(*(owner(p) for p in range(self.partitions)))
        return dict(enumerate(found))

    def _alive(self) -> set[str]:
        horizon = time.monotonic() - self.ttl_s * 1.5
        return {m for m, seen in self._members.items() if seen >= horizon} | {self.member}

    async def _watch_members(self) -> None:
        assert self._kv is not None
        while not self._stopping:
            try:
                watcher = await self._kv.watch("member.>")
                async for entry in watcher:
                    if entry is None:
                        continue
                    if entry.operation in ("DEL", "PURGE"):
                        self._members.pop(entry.key, None)
                    else:
                        self._members[entry.key] = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: watching members failed: %s", self.name, exc)
                await asyncio.sleep(self.tick_s)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
