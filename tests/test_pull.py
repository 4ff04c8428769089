"""``cogo.streams.pull``: the reply subjects of real deliveries parse to what nats-py's own
``msg.metadata`` says, in both token layouts; a pull request is what the server expects."""

from __future__ import annotations

import json

import pytest
from nats.js import api

from cogo.streams.pull import ack_tokens, next_subject, pull_request


async def test_ack_tokens_of_real_deliveries_match_nats_py(nc, js):
    await js.add_stream(api.StreamConfig(name="PULLT", subjects=["pullt.>"]))
    for i in range(3):
        await js.publish("pullt.x", f"{i}".encode())
    sub = await js.pull_subscribe("pullt.>", durable="p", stream="PULLT")
    msgs = await sub.fetch(3, timeout=10)
    assert len(msgs) == 3
    for msg in msgs:
        meta = msg.metadata
        delivered, sseq, cseq, ts_ns, pending = ack_tokens(msg.reply)
        assert (delivered, sseq, cseq, pending) == (
            meta.num_delivered,
            meta.sequence.stream,
            meta.sequence.consumer,
            meta.num_pending,
        )
        assert abs(ts_ns / 1e9 - meta.timestamp.timestamp()) < 1e-3


def test_the_twelve_token_form_and_bad_subjects():
    reply = "$JS.ACK.domain.accounthash.S.C.2.41.40.1700000000000000000.7.token"
    assert ack_tokens(reply) == (2, 41, 40, 1700000000000000000, 7)
    for bad in ("_INBOX.abc", "$JS.ACK.S.C.1"):
        with pytest.raises(ValueError):
            ack_tokens(bad)


def test_pull_request_body():
    assert next_subject("TASKS", "echo_run_0") == "$JS.API.CONSUMER.MSG.NEXT.TASKS.echo_run_0"
    assert json.loads(pull_request(10, expires=1.5)) == {"batch": 10, "expires": 1_500_000_000}
    assert json.loads(pull_request(5, no_wait=True)) == {"batch": 5, "no_wait": True}
