"""The dispatcher's records of durable tasks do not outlive their use: a wake-up noted for a
task with no suspended run (one that still runs, or one that ended, as when a cancelled
parent's children end after it) expires after ``[runtime] arrival_ttl_s``."""

from __future__ import annotations

import pytest
from nats.js.errors import KeyNotFoundError

from cogo.runtime.records import record_key
from cogo.streams.commands import signal_message
from cogo.streams.envelope import new_id
from cogo.streams.topology import SUSPENSION_BUCKET
from tests import durable_apps
from tests.helpers import wait_until


@pytest.fixture
def cogo_apps():
    return [durable_apps.app]


@pytest.fixture
def cogo_config():
    return "[runtime]\nsuspend_after_ms = 50\narrival_ttl_s = 2\n"


async def test_a_wake_up_no_run_takes_expires(cogo_env):
    js = cogo_env.client.nc.jetstream()
    info = await js.stream_info(f"KV_{SUSPENSION_BUCKET}")
    assert info.config.allow_msg_ttl
    kv = await js.key_value(SUSPENSION_BUCKET)
    ghost = f"gone-{new_id()}"  # a task that has ended, or never ran here
    for name in ("late", "later"):  # the first note is created, the second updates it
        subject, data, headers = signal_message(ghost, name, {"n": 1})
        await js.publish(subject, data, headers=headers)

    async def noted() -> bool:
        try:
            entry = await kv.get(record_key(ghost))
        except KeyNotFoundError:
            return False
        return entry.value is not None and b"later" in entry.value and b"signal:late" in entry.value

    await wait_until(noted, 30, "the dispatcher never noted both wake-ups")

    async def dropped() -> bool:
        try:
            entry = await kv.get(record_key(ghost))
        except KeyNotFoundError:
            return True
        return entry.value is None or entry.operation in ("DEL", "PURGE")

    await wait_until(dropped, 30, "the note of a wake-up nobody took was never dropped")
