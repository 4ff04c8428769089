"""``cogo sql`` and ``cogo replay``.

One process owns the DuckDB file. While ``cogo up`` runs (``<data-dir>/endpoints.json``
answers), both commands go through its HTTP facade; otherwise ``cogo sql`` opens the file
read-only and ``cogo replay`` rebuilds it itself from the NATS server (``--nats-url``).
A file held by a ``cogo run projector`` is refused with ``projection.busy``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import httpx

from cogo.config import load_config
from cogo.endpoints import Endpoints, read_endpoints
from cogo.errors import CogoError, ProjectionBusy, ProjectionError, SqlError

UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)


class _RemoteError(CogoError):
    """Raised when the running instance answered with an error ``code``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("sql", help="run a read-only SQL query on the projections")
    common(p)
    p.add_argument("query", help='e.g. "SELECT type, count(*) FROM bus_events GROUP BY ALL"')
    p.add_argument("--json", action="store_true", help="print {columns, rows, ...} as JSON")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds (default 10)")
    p.set_defaults(func=cmd_sql)

    p = subparsers.add_parser("replay", help="rebuild the DuckDB projection from the streams")
    common(p)
    p.add_argument("--batch", type=int, default=5000, help="messages per transaction")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_replay)


def _running(args: argparse.Namespace) -> Endpoints | None:
    """The endpoints of the ``cogo up`` in ``--data-dir``, if it wrote any with a facade."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per request

    endpoints = read_endpoints(args.data_dir)
    return endpoints if endpoints and endpoints.http_url else None


def _headers(endpoints: Endpoints) -> dict[str, str]:
    token = endpoints.api_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _remote_error(response: httpx.Response) -> CogoError:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    detail = body.get("detail", body)
    code = body.get("code") or ("projection.busy" if response.status_code == 409 else "cogo.error")
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    return _RemoteError(f"{detail} (HTTP {response.status_code})", code)


# -- cogo sql --------------------------------------------------------------------------


def cmd_sql(args: argparse.Namespace) -> int:
    from cogo.projections import sandbox

    if args.max_rows is not None and not 1 <= args.max_rows <= sandbox.MAX_ROWS:
        raise SqlError(f"--max-rows must be between 1 and {sandbox.MAX_ROWS}")
    if args.timeout is not None and not 0 < args.timeout <= sandbox.MAX_TIMEOUT_S:
        raise SqlError(f"--timeout must be in (0, {sandbox.MAX_TIMEOUT_S:g}] seconds")
    options: dict[str, Any] = {}
    if args.max_rows is not None:
        options["max_rows"] = args.max_rows
    if args.timeout is not None:
        options["timeout_s"] = args.timeout
    result = None
    endpoints = _running(args)
    if endpoints is not None:
        result = _sql_remote(endpoints, args.query, options)
    if result is None:
        result = _sql_local(args, args.query, options)
    _print_result(result, as_json=args.json)
    return 0


def _sql_remote(endpoints: Endpoints, query: str, options: dict[str, Any]) -> Any:
    """The result from the running instance; None if nothing answers there."""
    url = f"{endpoints.http_url}/api/sql"
    timeout = float(options.get("timeout_s", 10.0)) + 10.0
    try:
        response = httpx.post(url, json={"sql": query, **options}, headers=_headers(endpoints), timeout=timeout)
    except UNREACHABLE:
        return None  # a stale endpoints.json: nothing runs there
    if response.status_code == 503 and "does not run" in response.text:
        return None  # that instance has no projector: the file is free
    if response.status_code != 200:
        raise _remote_error(response)
    return response.json()


def _sql_local(args: argparse.Namespace, query: str, options: dict[str, Any]) -> Any:
    from cogo.projections import sandbox
    from cogo.projections.store import connect, db_path

    path = db_path(args.data_dir)
    if not path.exists():
        raise ProjectionError(
            f"no projection at {path}: start `cogo up` (or `cogo run projector`), "
            "or build it with `cogo replay --nats-url ...`"
        )
    config = load_config(args.config, args.data_dir)
    con = connect(path, read_only=True, limits=config.duckdb)
    try:
        return sandbox.run_query(con.cursor(), query, max_bytes=config.sql.max_result_bytes, **options).as_dict()
    finally:
        con.close()


def _print_result(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
        return
    if not sys.stdout.isatty():
        # piped: tab-separated, nothing cut to fit a terminal
        print("\t".join(result["columns"]))
        for row in result["rows"]:
            print("\t".join("NULL" if v is None else _cell(v) for v in row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*result["columns"], show_lines=False)
    for row in result["rows"]:
        table.add_row(*["NULL" if v is None else _cell(v) for v in row])
    Console().print(table)
    note = f"{result.get('row_count', len(result['rows']))} row(s)"
    if result.get("truncated"):
        note += " (truncated: raise --max-rows)"
    print(note, file=sys.stderr)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- cogo replay -----------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True)
    endpoints = _running(args)
    result = None
    if endpoints is not None:
        result = _replay_remote(endpoints, err)
    if result is None:
        result = asyncio.run(_replay_local(args, err))
    for warning in result.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {warning}")
    if args.json:
        print(json.dumps(result))
    else:
        rate = result.get("events_per_s")
        messages = result.get("messages", {})
        print(
            f"replayed {messages.get('EVENTS', 0)} event(s) and {messages.get('DLQ', 0)} "
            f"dead letter(s) into {result['path']} in {result['seconds']}s"
            + (f" ({rate:,.0f} events/s)" if rate else "")
        )
    return 0


class _Bars:
    """A rich progress bar per stream, fed by ReplayProgress-shaped updates."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10,.0f} events/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, stream: str, applied: int, total: int, rate: float) -> None:
        if stream not in self.tasks:
            self.tasks[stream] = self.progress.add_task(f"replay {stream}", total=total, rate=0.0)
        self.progress.update(self.tasks[stream], completed=applied, total=max(total, applied), rate=rate)


def _replay_remote(endpoints: Endpoints, console: Any) -> dict[str, Any] | None:
    url = f"{endpoints.http_url}/api/projections/replay"
    console.print(f"replaying through the running instance at {endpoints.http_url}")
    try:
        with (
            httpx.stream("POST", url, headers=_headers(endpoints), timeout=None) as response,
            _Bars(console) as bars,
        ):
            if response.status_code == 503 and "does not run" in response.read().decode():
                return None
            if response.status_code != 200:
                response.read()
                raise _remote_error(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                message = json.loads(line)
                if "progress" in message:
                    p = message["progress"]
                    bars.update(p["stream"], p["applied"], p["total"], p["rate"])
                elif "error" in message:
                    raise _RemoteError(message["error"], message.get("code", "projection.error"))
                elif message.get("done"):
                    return message  # type: ignore[no-any-return]
    except UNREACHABLE:
        return None
    raise ProjectionError("the running instance ended the replay without a result")


async def _replay_local(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from cogo.cli.common import resolve_nats_url
    from cogo.projections.replay import ReplayProgress, replay_offline
    from cogo.streams.connection import connect

    try:
        url = resolve_nats_url(args)
    except CogoError:
        raise ProjectionError(
            "replay reads the streams from NATS: pass --nats-url, or run it while `cogo up` runs"
        ) from None
    try:
        nc = await connect(url, "cogo-replay")
    except Exception as exc:
        raise ProjectionError(f"cannot reach NATS at {url}: {exc}") from None
    try:
        with _Bars(console) as bars:

            def progress(p: ReplayProgress) -> None:
                bars.update(p.stream, p.applied, p.total, p.rate)

            try:
                limits = load_config(args.config, args.data_dir).duckdb
                result = await replay_offline(nc, args.data_dir, batch=args.batch, progress=progress, limits=limits)
            except ProjectionBusy as exc:
                raise ProjectionBusy(f"{exc}. Stop that process first, or replay through `cogo up`") from None
        return result.as_dict()
    finally:
        await nc.close()
