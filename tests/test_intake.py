"""The intake parser reads the NATS protocol exactly as nats-py's parser does, only faster."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from cogo.streams.connection import connect
from cogo.streams.intake import IntakeParser, direct_delivery, inline_status, parse_headers


class Recorder:
    """Stands in for the client: records what a parser hands it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(self, sid, subject, reply, data, headers):  # noqa: ANN001
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


def protocol_stream(rng: random.Random, count: int) -> bytes:
    """Every server operation a client sees, in a random mix."""
    out = []
    for i in range(count):
        kind = rng.random()
        body = json.dumps({"n": i, "pad": "x" * rng.randint(0, 300)}).encode()
        if kind < 0.35:
            hdr = f"NATS/1.0\r\nNats-Msg-Id: m{i}\r\nCogo-Reason: a: b\r\n\r\n".encode()
            reply = f" $JS.ACK.EVENTS.c.1.{i}.{i}.17000.{count - i}" if rng.random() < 0.8 else ""
            out.append(
                f"HMSG events.x.{i} {rng.choice([1, 2, 3])}{reply} {len(hdr)} {len(hdr) + len(body)}\r\n".encode()
                + hdr
                + body
                + b"\r\n"
            )
        elif kind < 0.6:
            reply = f" _INBOX.r{i}" if rng.random() < 0.5 else ""
            out.append(f"MSG subj.{i} {rng.choice([1, 2, 3])}{reply} {len(body)}\r\n".encode() + body + b"\r\n")
        elif kind < 0.7:
            status = rng.choice([b"404 No Messages", b"408 Request Timeout", b"100 Idle Heartbeat"])
            hdr = b"NATS/1.0 " + status + b"\r\n\r\n"
            out.append(f"HMSG _INBOX.x 2 {len(hdr)} {len(hdr)}\r\n".encode() + hdr + b"\r\n")
        elif kind < 0.75:
            out.append(b"MSG empty 1 0\r\n\r\n")
        elif kind < 0.82:
            out.append(b"PING\r\n")
        elif kind < 0.89:
            out.append(b"PONG\r\n")
        elif kind < 0.95:
            out.append(b"+OK\r\n")
        else:
            out.append(b'INFO {"server_id":"x","max_payload":1048576}\r\n')
    return b"".join(out)


async def parse_all(parser: Parser, stream: bytes, cuts: list[int]) -> None:
    previous = 0
    for cut in [*cuts, len(stream)]:
        await parser.parse(stream[previous:cut])
        previous = cut


@pytest.mark.parametrize("seed", range(12))
async def test_same_calls_as_nats_py_over_any_chunking(seed):
    rng = random.Random(seed)
    stream = protocol_stream(rng, 400)
    # chunk boundaries anywhere: inside control lines, headers, payloads, CRLFs
    cuts = sorted(rng.sample(range(1, len(stream)), rng.choice([1, 30, 300, 3000])))
    expected, got = Recorder(), Recorder()
    await parse_all(Parser(expected), stream, cuts)
    await parse_all(IntakeParser(got), stream, cuts)
    assert got.calls == expected.calls
    assert len(expected.calls) == 400 - stream.count(b"+OK\r\n")  # +OK calls nothing


async def test_sinks_take_their_subscription_raw_and_the_rest_goes_to_the_client():
    rng = random.Random(5)
    stream = protocol_stream(rng, 300)
    cuts = sorted(rng.sample(range(1, len(stream)), 200))
    expected, rest = Recorder(), Recorder()
    await parse_all(Parser(expected), stream, cuts)
    parser = IntakeParser(rest)
    sunk: list[tuple[Any, ...]] = []
    parser.sinks[2] = lambda subject, reply, data, headers: sunk.append(("msg", 2, subject, reply, data, headers))
    await parse_all(parser, stream, cuts)
    assert sunk == [c for c in expected.calls if c[:2] == ("msg", 2)]
    assert rest.calls == [c for c in expected.calls if c[:2] != ("msg", 2)]


async def test_malformed_input_is_a_protocol_error_like_nats_py():
    for bad in (b"HMSG a 1 x y\r\n", b"MSG a b 5\r\nhello\r\n", b"WHAT\r\n"):
        for parser in (Parser(Recorder()), IntakeParser(Recorder())):
            with pytest.raises(ProtocolError):
                await parser.parse(bad)


def test_header_blocks():
    raw = b"NATS/1.0\r\nNats-Msg-Id: abc\r\nCogo-Reason: x: y \r\nbad line\r\n\r\n"
    assert parse_headers(raw) == {"Nats-Msg-Id": "abc", "Cogo-Reason": "x: y"}
    assert inline_status(raw) is None
    status = b"NATS/1.0 409 Consumer Deleted\r\n\r\n"
    assert parse_headers(status) == {"Status": "409", "Description": "Consumer Deleted"}
    assert inline_status(status) == "409 Consumer Deleted"
    assert inline_status(b"NATS/1.0 404\r\n\r\n") == "404"
    assert parse_headers(None) == {}


async def test_a_live_client_with_a_sink_still_does_everything_else(nats_server):
    await nats_server.wait_ready()
    nc = await connect(nats_server.url, "intake-test")
    try:
        got: list[tuple[bytes, bytes, bytes, bytes | None]] = []
        arrived = asyncio.Event()

        def sink(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            got.append((subject, reply, data, headers))
            if len(got) == 200:
                arrived.set()

        raw_sub = await nc.subscribe("raw.>")
        assert direct_delivery(nc, raw_sub._id, sink)
        assert isinstance(nc._ps, IntakeParser)

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data.upper())

        await nc.subscribe("svc", cb=echo)
        normal = await nc.subscribe("plain")
        for i in range(200):
            await nc.publish(f"raw.{i}", f"body {i}".encode() * 50, headers={"K": str(i)})
        await nc.publish("plain", b"hello", headers={"A": "1"})
        # request/reply and ordinary subscriptions are untouched
        reply = await nc.request("svc", b"ping", timeout=5)
        assert reply.data == b"PING"
        msg = await normal.next_msg(timeout=5)
        assert (msg.data, msg.headers) == (b"hello", {"A": "1"})
        await asyncio.wait_for(arrived.wait(), 5)
        assert [g[0] for g in got] == [f"raw.{i}".encode() for i in range(200)]
        assert got[7][2] == b"body 7" * 50
        assert parse_headers(got[7][3]) == {"K": "7"}
        # a removed sink hands the subscription back to nats-py
        assert direct_delivery(nc, raw_sub._id, None)
        await nc.publish("raw.back", b"x")
        assert (await raw_sub.next_msg(timeout=5)).data == b"x"
        await nc.flush()
        assert len(got) == 200
    finally:
        await nc.close()
