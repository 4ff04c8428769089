"""``<data-dir>/endpoints.json``: where a running ``cogo up`` is, and how to talk to it.

``cogo up`` writes it once it serves (0600: it holds the API token and, under ``--auth``,
the ``client`` user's password) and removes it when it stops. Everything that looks for a
running system reads it here: ``cogo.Client``, the CLI's commands, the tests' ``cogo up``.
A missing, unreadable or garbled file reads as "nothing runs there".

    endpoints = read_endpoints(Path(".cogo"))
    if endpoints is not None:
        print(endpoints.nats_url, endpoints.http_url)
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from cogo.secretfile import write_private_text

ENDPOINTS_FILE = "endpoints.json"


class Endpoints(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one ``cogo up`` wrote about itself; keys it did not write are ``None``."""

    nats_url: str
    role: str = "all"
    pid: int | None = None  # the writer: only it removes the file on stop
    http_url: str | None = None  # absent under ``--role workers`` (no facade)
    api_token: str | None = None
    # under --auth: the `client` user of readers, and the key their outputs are checked with
    nats_user: str | None = None
    nats_password: str | None = None
    output_key: str | None = None


_decoder = msgspec.json.Decoder(Endpoints)
_encoder = msgspec.json.Encoder()


def endpoints_path(data_dir: Path) -> Path:
    return data_dir / ENDPOINTS_FILE


def read_endpoints(data_dir: Path) -> Endpoints | None:
    """The endpoints of the ``cogo up`` of ``data_dir``, or None when none wrote any."""
    try:
        return _decoder.decode(endpoints_path(data_dir).read_bytes())
    except (OSError, msgspec.DecodeError):  # ValidationError is a DecodeError
        return None


def write_endpoints(data_dir: Path, endpoints: Endpoints) -> Path:
    """Replace the file with ``endpoints``, 0600 and atomically (a reader never sees half)."""
    text = msgspec.json.format(_encoder.encode(endpoints), indent=2).decode()
    return write_private_text(endpoints_path(data_dir), text)


def remove_endpoints(data_dir: Path) -> None:
    """Remove the file if this process wrote it (a later ``cogo up``'s file stays)."""
    endpoints = read_endpoints(data_dir)
    if endpoints is not None and endpoints.pid == os.getpid():
        endpoints_path(data_dir).unlink(missing_ok=True)
