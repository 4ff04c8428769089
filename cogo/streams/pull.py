"""The JetStream pull protocol as Cogo speaks it, in one place: the request a consumer's
pullers publish to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``, and what the
``$JS.ACK...`` reply subject of each delivered message says about it.

The actors' ``Puller`` and the projector's feed read deliveries straight from these
subjects instead of nats-py's ``fetch`` / ``msg.metadata`` (which build several objects
and a datetime per message, and whose ``fetch`` abandons a request it stopped waiting for,
nats.py #933). The token layout is the server's: tested against the nats-py range pinned
in pyproject.toml (tests/test_intake.py, tests/test_pull.py)."""

from __future__ import annotations

import json

NEXT_PREFIX = "$JS.API.CONSUMER.MSG.NEXT"


def next_subject(stream: str, consumer: str) -> str:
    """Where pull requests for ``consumer`` of ``stream`` go."""
    return f"{NEXT_PREFIX}.{stream}.{consumer}"


def pull_request(batch: int, *, expires: float | None = None, no_wait: bool = False) -> bytes:
    """The body of one pull request: up to ``batch`` messages, waiting at most ``expires``
    seconds (``no_wait``: answer at once with what is there)."""
    request: dict[str, object] = {"batch": batch}
    if no_wait:
        request["no_wait"] = True
    if expires is not None:
        request["expires"] = int(expires * 1e9)
    return json.dumps(request).encode()


def ack_tokens(reply: str) -> tuple[int, int, int, int, int]:
    """``(delivered, stream_seq, consumer_seq, timestamp_ns, pending)`` of a delivery.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or the newer
    12-token form with domain and account hash in front of the stream; ValueError if
    ``reply`` is not a JetStream ack subject."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream delivery: {reply!r}")
    base = 2 if len(tokens) == 9 else 4
    return (
        int(tokens[base + 2]),
        int(tokens[base + 3]),
        int(tokens[base + 4]),
        int(tokens[base + 5]),
        int(tokens[base + 6]),
    )
