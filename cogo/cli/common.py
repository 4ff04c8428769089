"""What every ``cogo`` subcommand shares: the common arguments, where the bus is, and a
connection as the right user."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cogo.config import NATS_URL_ENV, NATS_USER_ENV, env, resolve_data_dir
from cogo.errors import CogoError


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the system keeps its files (default: COGO_DATA_DIR, else "
        "data_dir of the nearest cogo.toml upward, else ./.cogo)",
    )
    p.add_argument("--config", type=Path, default=None, help="TOML merged over the defaults")
    p.add_argument(
        "--nats-url", default=env(NATS_URL_ENV), help="NATS server(s), comma-separated; default: the running `cogo up`"
    )


def resolve_nats_url(args: argparse.Namespace) -> str:
    """``--nats-url``, else the running ``cogo up`` in ``--data-dir``."""
    if args.nats_url:
        return str(args.nats_url)
    from cogo.endpoints import read_endpoints

    endpoints = read_endpoints(args.data_dir)
    if endpoints is not None:
        return endpoints.nats_url
    raise CogoError(not_running(args.data_dir))


def not_running(data_dir: Path) -> str:
    """Why a command found no system, and how to point it at one."""
    return (
        f"no running `cogo up` in {data_dir} (no endpoints.json there): start one with "
        "`cogo up`, or point at yours with --data-dir, COGO_DATA_DIR or a cogo.toml "
        "(data_dir) in your project, or give --nats-url"
    )


def resolve_paths(args: argparse.Namespace) -> None:
    """Fill ``args.data_dir`` the one way every command and ``cogo.Client()`` use."""
    if hasattr(args, "data_dir"):
        args.data_dir = resolve_data_dir(args.data_dir)


def nats_credentials(args: argparse.Namespace, user: str) -> dict[str, str]:
    """Credentials of ``user`` from ``<data-dir>/credentials.json`` when the system runs with
    ``--auth`` (unless ``COGO_NATS_USER`` is set, which ``connect`` then uses)."""
    if env(NATS_USER_ENV):
        return {}
    path = Path(args.data_dir) / "credentials.json"
    try:
        passwords = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {"user": user, "password": passwords[user]} if user in passwords else {}


@contextlib.asynccontextmanager
async def bus(args: argparse.Namespace, name: str, user: str = "admin") -> AsyncIterator[Any]:
    """A NATS connection for one CLI command, as ``user`` when the system runs ``--auth``."""
    from cogo.streams.connection import connect

    nc = await connect(resolve_nats_url(args), name, **nats_credentials(args, user))
    try:
        yield nc
    finally:
        await nc.close()


class RemoteError(CogoError):
    """Raised when the running system answered with an error: its own ``code`` is kept."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
