"""The ``cogo`` command.

cogo up       [--app pkg.module:app ...] [--data-dir DIR] [--nats-port N] [--http-port N]
              [--nats-url URL] [--sync S] [--cluster N] [--auth]
cogo run      TARGET [--agent NAME] [--replicas N] [--version V] [--nats-url URL]
cogo submit   --route ROUTE [--payload JSON|@file|-] [--task-id ID] [--wait | --follow]
cogo status   TASK_ID
cogo policy   get|set|reset|list ...
cogo routes   [list] | forget ROUTE
cogo reclaim  [--dead-letter]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cogo.config import load_config
from cogo.errors import CogoError

DEFAULT_DATA_DIR = Path(os.environ.get("COGO_DATA_DIR", ".cogo"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default ./.cogo")
    p.add_argument("--config", type=Path, default=None, help="TOML merged over the defaults")
    p.add_argument("--nats-url", default=os.environ.get("COGO_NATS_URL"),
                   help="NATS server(s), comma-separated; default: the running `cogo up`")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogo", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the whole system on this machine")
    _common(p)
    p.add_argument("--nats-port", type=int, default=None)
    p.add_argument("--http-port", type=int, default=None)
    p.add_argument("--sync", choices=["always", "default"], default="always",
                   help="JetStream fsync: always (durable, default) or the server default")  # fmt: skip
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="start an N-node local JetStream cluster (streams at N replicas)")  # fmt: skip
    p.add_argument("--auth", action="store_true",
                   help="least privilege: one NATS user per actor kind and per app, passwords "
                   "in the data dir")  # fmt: skip
    p.add_argument("--app", action="append", default=[], metavar="MODULE:ATTR",
                   help="also run this app's agents (repeatable), e.g. lexicon.agents:app")  # fmt: skip
    p.add_argument("--app-dir", default=".", help="where apps import from (default: .)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "run", help="run an app's agents (or one of Cogo's) in this process or N processes",
        description="Run agents: TARGET is pkg.module:app (an app of yours), the name of one "
        "of Cogo's own agents, or the name of an installed app.",
        epilog=_runnable_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _common(p)
    p.add_argument("target", metavar="TARGET", help="pkg.module:app, or a name listed below")
    p.add_argument("--agent", default=None, help="run only this agent of the app")
    p.add_argument("--replicas", type=int, default=None,
                   help="processes per agent (default: what the agent declares)")  # fmt: skip
    p.add_argument("--version", default=None, help="version this worker declares (canary)")
    p.add_argument("--concurrency", type=int, default=None, help="handlers per process")
    p.add_argument("--app-dir", default=".", help="where the app imports from (default: .)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit a task to orchestrator.execute.0")
    _common(p)
    p.add_argument("--route", required=True)
    p.add_argument("--payload", default="{}",
                   help="a JSON object, @file.json to read it from a file, or - for stdin")  # fmt: skip
    p.add_argument("--task-id", default=None)
    p.add_argument("--wait", action="store_true",
                   help="wait for the task to end and print its status (exit 1 if it failed)")  # fmt: skip
    p.add_argument("--follow", action="store_true",
                   help="print the task's output (ctx.emit) as it arrives, then its status "
                   "(exit 1 if it failed); text chunks as they are, others as JSON lines")  # fmt: skip
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a task's status, attempt, result or error, and events")
    _common(p)
    p.add_argument("task_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("policy", help="read or change route policies at runtime")
    _common(p)
    p.add_argument("action", choices=["get", "set", "reset", "list"])
    p.add_argument("route", nargs="?")
    p.add_argument("changes", nargs="?",
                   help='JSON, e.g. \'{"max_tokens": 1000, "ceilings": {"max_tokens": 1000}}\'')  # fmt: skip
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("routes", help="the declared routes: app, agent, consumer state")
    _common(p)
    p.add_argument("action", nargs="?", choices=["list", "forget"], default="list")
    p.add_argument("route", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("reclaim", help="list stuck / redelivered messages per consumer")
    _common(p)
    p.add_argument("--dead-letter", action="store_true",
                   help="move stranded messages to DLQ with an execute_failed event")  # fmt: skip
    p.set_defaults(func=cmd_reclaim)

    for register in _plugins():
        register(sub, _common)
    return parser


def _plugins() -> list[Any]:
    """Subcommands that live with their package (projections, workflows, bench)."""
    from cogo import bench
    from cogo.projections import commands as projection_commands
    from cogo.workflows import commands as workflow_commands

    return [projection_commands.register, workflow_commands.register, bench.register]


def resolve_nats_url(args: argparse.Namespace) -> str:
    """``--nats-url``, else the running ``cogo up`` in ``--data-dir``."""
    if args.nats_url:
        return str(args.nats_url)
    from cogo.system import read_endpoints

    endpoints = read_endpoints(args.data_dir)
    if endpoints and endpoints.get("nats_url"):
        return str(endpoints["nats_url"])
    raise CogoError(f"no --nats-url and no running `cogo up` in {args.data_dir} (endpoints.json)")


def nats_credentials(args: argparse.Namespace, user: str) -> dict[str, str]:
    """Credentials of ``user`` from ``<data-dir>/credentials.json`` when the system runs with
    ``--auth`` (unless ``COGO_NATS_USER`` is set, which ``connect`` then uses)."""
    if os.environ.get("COGO_NATS_USER"):
        return {}
    path = Path(args.data_dir) / "credentials.json"
    try:
        passwords = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {"user": user, "password": passwords[user]} if user in passwords else {}


def _runnable_epilog() -> str:
    from cogo.actors.loader import runnable

    try:
        config = load_config(None, DEFAULT_DATA_DIR)
    except CogoError:
        config = None
    return "what can run:\n" + "\n".join(runnable(config))


@contextlib.asynccontextmanager
async def bus(args: argparse.Namespace, name: str, user: str = "admin") -> AsyncIterator[Any]:
    """A NATS connection for one CLI command, as ``user`` when the system runs ``--auth``."""
    from cogo.actors.runner import connect

    nc = await connect(resolve_nats_url(args), name, **nats_credentials(args, user))
    try:
        yield nc
    finally:
        await nc.close()


def cmd_up(args: argparse.Namespace) -> int:
    from cogo.actors.loader import add_app_dir
    from cogo.actors.runner import _use_uvloop
    from cogo.system import System, run_up

    system = System(
        args.data_dir,
        config_path=args.config,
        nats_url=args.nats_url,
        nats_port=args.nats_port,
        http_port=args.http_port,
        sync=args.sync,
        cluster=args.cluster,
        auth=args.auth,
        apps=args.app,
        app_dir=add_app_dir(args.app_dir),
    )
    _use_uvloop()
    asyncio.run(run_up(system))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cogo.actors.loader import add_app_dir, resolve
    from cogo.actors.runner import check_can_run, run_agent_main, run_processes
    from cogo.streams.auth import user_of

    app_dir = add_app_dir(args.app_dir)
    loaded = resolve(args.target)
    if args.agent:
        specs = [loaded.app.get(args.agent)]
    elif args.target in loaded.app.agents:  # `cogo run echo`: one of Cogo's own agents
        specs = [loaded.app.agents[args.target]]
    else:
        specs = [spec for spec in loaded.app.agents.values() if spec.up]
    if args.replicas is not None and args.replicas < 1:
        raise CogoError("--replicas must be at least 1")
    check_can_run(specs, args.version)
    url = resolve_nats_url(args)
    if len(specs) > 1 or (args.replicas or specs[0].replicas) > 1:
        return run_processes(
            loaded, specs, args.replicas, url, app_dir=app_dir, config_path=args.config,
            data_dir=args.data_dir, version=args.version, concurrency=args.concurrency,
        )  # fmt: skip
    config = load_config(args.config, args.data_dir)
    creds = nats_credentials(args, user_of(loaded.app.name, specs[0].name))
    if creds:  # the agent's own user, handed to the process through its environment
        os.environ["COGO_NATS_USER"], os.environ["COGO_NATS_PASSWORD"] = (
            creds["user"],
            creds["password"],
        )
    return run_agent_main(
        specs[0], url, config, concurrency=args.concurrency, version=args.version,
        data_dir=args.data_dir,
    )  # fmt: skip


def read_payload(text: str) -> dict[str, Any]:
    """``--payload``: JSON text, ``@path`` (a file), or ``-`` (standard input)."""
    where = "--payload"
    if text == "-":
        text, where = sys.stdin.read(), "standard input"
    elif text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise CogoError(f"--payload {text}: cannot read {path}: {exc.strerror}") from None
        where = str(path)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CogoError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise CogoError(f"{where} must hold a JSON object, not {type(payload).__name__}")
    return payload


def cmd_submit(args: argparse.Namespace) -> int:
    import msgspec

    from cogo.client import Client

    payload = read_payload(args.payload)

    async def main() -> int:
        creds = nats_credentials(args, "client")
        async with Client(
            resolve_nats_url(args), user=creds.get("user"), password=creds.get("password"),
            name="cogo-submit",
        ) as client:  # fmt: skip
            handle = await client.submit(args.route, payload, task_id=args.task_id)
            print(json.dumps({"task_id": handle.task_id, "duplicate": handle.duplicate,
                              "seq": handle.seq}), flush=True)  # fmt: skip
            if not (args.wait or args.follow):
                return 0
            try:
                if args.follow:
                    async with asyncio.timeout(args.timeout):
                        await _follow(handle)
                final = await handle.wait(timeout=args.timeout)
            except TimeoutError:
                print(f"task {handle.task_id} did not end within {args.timeout}s", file=sys.stderr)
                return 2
            print(json.dumps(msgspec.to_builtins(final)))
            return 0 if final.status == "succeeded" else 1

    return asyncio.run(main())


async def _follow(handle: Any) -> None:
    """Print ``handle``'s output: text chunks as they come (tokens), others as JSON lines."""
    text = False  # in the middle of a line of text chunks
    async for chunk in handle.stream():
        if isinstance(chunk.data, str):
            sys.stdout.write(chunk.data)
            text = True
        else:
            if text:
                sys.stdout.write("\n")
                text = False
            sys.stdout.write(json.dumps(chunk.data) + "\n")
        sys.stdout.flush()
    if text:
        sys.stdout.write("\n")


def cmd_status(args: argparse.Namespace) -> int:
    import msgspec

    from cogo.client import Client

    async def main() -> int:
        creds = nats_credentials(args, "client")
        async with Client(
            resolve_nats_url(args), user=creds.get("user"), password=creds.get("password"),
            name="cogo-status",
        ) as client:  # fmt: skip
            status = await client.status(args.task_id)
        print(json.dumps(msgspec.to_builtins(status), indent=2))
        return 0

    return asyncio.run(main())


def cmd_policy(args: argparse.Namespace) -> int:
    import msgspec

    from cogo.streams.policies import read_policy, reset_policy, set_policy
    from cogo.streams.topology import POLICY_BUCKET

    async def main() -> int:
        async with bus(args, "cogo-policy") as nc:
            js = nc.jetstream()
            if args.action == "list":
                kv = await js.key_value(POLICY_BUCKET)
                for key in sorted(await kv.keys()):
                    print(key)
                return 0
            if not args.route:
                raise CogoError(f"policy {args.action} needs a route")
            if args.action == "get":
                policy = await read_policy(js, args.route)
            elif args.action == "reset":
                policy = await reset_policy(js, args.route)
            else:
                try:
                    changes = json.loads(args.changes or "")
                except json.JSONDecodeError as exc:
                    raise CogoError(f"changes must be a JSON object: {exc}") from exc
                if not isinstance(changes, dict):
                    raise CogoError("changes must be a JSON object")
                policy = await set_policy(js, args.route, changes)
            print(json.dumps(msgspec.to_builtins(policy), indent=2))
            return 0

    return asyncio.run(main())


def cmd_routes(args: argparse.Namespace) -> int:
    from cogo.streams.policies import forget_route
    from cogo.streams.routes import durable_name

    async def main() -> int:
        from cogo.streams.policies import PolicyStore
        from cogo.streams.topology import task_consumers

        async with bus(args, "cogo-routes") as nc:
            js = nc.jetstream()
            if args.action == "forget":
                if not args.route:
                    raise CogoError("routes forget needs a route")
                await forget_route(js, args.route)
                print(f"forgot {args.route}: tasks for it now fail with route.unknown")
                return 0
            store = PolicyStore(js)
            await store.start()
            try:
                records = {route: store.record(route) for route in store.routes()}
            finally:
                await store.stop()
            consumers = {info.name: info for info in await task_consumers(js)}
            rows = []
            for route, record in records.items():
                info = consumers.get(durable_name(route))
                rows.append({
                    "route": route, "app": record.app, "agent": record.agent,
                    "pending": info.num_pending if info else None,
                    "in_flight": info.num_ack_pending if info else None,
                    "overrides": record.overrides or None,
                })  # fmt: skip
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    print(f"{row['route']:<28} {row['app'] or '-':<12} {row['agent'] or '-':<16} "
                          f"pending={row['pending']} in_flight={row['in_flight']}"
                          + ("  (policy overridden at runtime)" if row["overrides"] else ""))  # fmt: skip
            return 0

    return asyncio.run(main())


def cmd_reclaim(args: argparse.Namespace) -> int:
    from cogo.actors.reclaim import reclaim

    async def main() -> int:
        async with bus(args, "cogo-reclaim") as nc:
            report = await reclaim(nc, load_config(args.config, args.data_dir), args.dead_letter)
        print(json.dumps(report, indent=2))
        return 0

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.CRITICAL)  # errors come through error_cb
    try:
        return int(args.func(args) or 0)
    except CogoError as exc:
        print(f"cogo: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
