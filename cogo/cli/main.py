"""The cogo command: run Cogo, submit tasks, inspect them.

cogo up       [--app pkg.module:app ...] [--data-dir DIR] [--nats-port N] [--http-port N]
              [--nats-url URL] [--sync S] [--cluster N] [--auth]
              [--role all|facade|workers] [--http-host ADDR]
cogo run      TARGET [--agent NAME] [--replicas N] [--version V] [--nats-url URL]
cogo submit   --route ROUTE [--payload JSON|@file|-] [--task-id ID] [--wait | --follow]
cogo status   TASK_ID
cogo signal   TASK_ID NAME [--data JSON]
cogo cancel   TASK_ID [--reason TEXT]
cogo policy   get|set|reset|list ...
cogo routes   [list] | forget ROUTE
cogo reclaim  [--dead-letter]
cogo cluster  config HOST... --out DIR [--auth] | replicas N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cogo.cli.common import bus, common_args, nats_credentials, resolve_nats_url, resolve_paths
from cogo.cli.tasks import cmd_cancel, cmd_policy, cmd_routes, cmd_signal, cmd_status, cmd_submit
from cogo.config import (
    NATS_PASSWORD_ENV,
    NATS_USER_ENV,
    SEAL_KEY_ENV,
    env,
    load_config,
    resolve_data_dir,
)
from cogo.errors import CogoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogo", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the whole system on this machine")
    common_args(p)
    p.add_argument("--nats-port", type=int, default=None)
    p.add_argument("--http-port", type=int, default=None)
    p.add_argument(
        "--sync",
        choices=["always", "default"],
        default="always",
        help="JetStream fsync: always (durable, default) or the server default",
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="start an N-node local JetStream cluster (streams at N replicas)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="least privilege: one NATS user per actor kind and per app, passwords in the data dir",
    )
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="also run this app's agents (repeatable), e.g. lexicon.agents:app",
    )
    p.add_argument("--app-dir", default=".", help="where apps import from (default: .)")
    p.add_argument(
        "--role",
        choices=["all", "facade", "workers"],
        default="all",
        help="on a cluster host: all (default), facade (HTTP and the projector) or workers (the agents only)",
    )
    p.add_argument(
        "--http-host", default="127.0.0.1", help="address the HTTP facade binds (default 127.0.0.1: this host only)"
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "run",
        help="run an app's agents (or one of Cogo's) in this process or N processes",
        description="Run agents: TARGET is pkg.module:app (an app of yours), the name of one "
        "of Cogo's own agents, or the name of an installed app.",
        epilog=_runnable_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common_args(p)
    p.add_argument("target", metavar="TARGET", help="pkg.module:app, or a name listed below")
    p.add_argument("--agent", default=None, help="run only this agent of the app")
    p.add_argument("--replicas", type=int, default=None, help="processes per agent (default: what the agent declares)")
    p.add_argument("--version", default=None, help="version this worker declares (canary)")
    p.add_argument("--concurrency", type=int, default=None, help="handlers per process")
    p.add_argument("--app-dir", default=".", help="where the app imports from (default: .)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit a task to orchestrator.execute.0")
    common_args(p)
    p.add_argument("--route", required=True, help="the route an agent declared, e.g. lexicon.count.0 (`cogo routes`)")
    p.add_argument("--payload", default="{}", help="a JSON object, @file.json to read it from a file, or - for stdin")
    p.add_argument(
        "--task-id",
        default=None,
        help="your id for the task (default: a new one); resubmitting an id within "
        "the duplicate window runs the task once",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the task to end and print its status (exit 1 if it failed)"
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="print the task's output (ctx.emit) as it arrives, then its status "
        "(exit 1 if it failed); text chunks as they are, others as JSON lines",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds --wait / --follow wait for the end (exit 2 past it; the task itself goes on)",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a task's status, attempt, result or error, and events")
    common_args(p)
    p.add_argument("task_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("signal", help="send a signal to a task's ctx.wait_signal(NAME)")
    common_args(p)
    p.add_argument("task_id")
    p.add_argument("name")
    p.add_argument("--data", default="null", help="JSON data (default null)")
    p.set_defaults(func=cmd_signal)

    p = sub.add_parser("cancel", help="cancel a task and its descendants")
    common_args(p)
    p.add_argument("task_id")
    p.add_argument("--reason", default=None)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("policy", help="read or change route policies at runtime")
    common_args(p)
    p.add_argument("action", choices=["get", "set", "reset", "list"])
    p.add_argument("route", nargs="?")
    p.add_argument("changes", nargs="?", help='JSON, e.g. \'{"max_tokens": 1000, "ceilings": {"max_tokens": 1000}}\'')
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("routes", help="the declared routes: app, agent, consumer state")
    common_args(p)
    p.add_argument("action", nargs="?", choices=["list", "forget"], default="list")
    p.add_argument("route", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("reclaim", help="list stuck / redelivered messages per consumer")
    common_args(p)
    p.add_argument(
        "--dead-letter", action="store_true", help="move stranded messages to DLQ with an execute_failed event"
    )
    p.set_defaults(func=cmd_reclaim)

    for register in _plugins():
        register(sub, common_args)
    return parser


def _plugins() -> list[Any]:
    """Subcommands that live with their package (projections, workflows, bench)."""
    from cogo import bench
    from cogo.cli import cluster as cluster_commands
    from cogo.cli import project as project_commands
    from cogo.cli import projections as projection_commands
    from cogo.cli import workflows as workflow_commands

    return [
        projection_commands.register,
        workflow_commands.register,
        bench.register,
        project_commands.register,
        cluster_commands.register,
    ]


def _runnable_epilog() -> str:
    from cogo.runtime.loader import runnable

    try:
        config = load_config(None, resolve_data_dir())
    except CogoError:
        config = None
    return "what can run:\n" + "\n".join(runnable(config))


def cmd_up(args: argparse.Namespace) -> int:
    from cogo.runtime.loader import add_app_dir
    from cogo.runtime.runner import _use_uvloop
    from cogo.runtime.system import System, run_up

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
        role=args.role,
        http_host=args.http_host,
    )
    _use_uvloop()
    asyncio.run(run_up(system))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cogo.runtime.loader import add_app_dir, resolve
    from cogo.runtime.runner import check_can_run, run_agent_main, run_processes
    from cogo.streams.auth import SEAL_HOLDERS, stored_seal_key, user_of

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
            loaded,
            specs,
            args.replicas,
            url,
            app_dir=app_dir,
            config_path=args.config,
            data_dir=args.data_dir,
            version=args.version,
            concurrency=args.concurrency,
        )
    config = load_config(args.config, args.data_dir)
    creds = nats_credentials(args, user_of(loaded.app.name, specs[0].name))
    if creds:  # the agent's own user, handed to the process through its environment
        os.environ[NATS_USER_ENV], os.environ[NATS_PASSWORD_ENV] = (
            creds["user"],
            creds["password"],
        )
        # a dispatcher beside `cogo up --auth` seals with the same key (cogo.streams.seal)
        key = stored_seal_key(Path(args.data_dir)) if creds["user"] in SEAL_HOLDERS else None
        if key and not env(SEAL_KEY_ENV):
            os.environ[SEAL_KEY_ENV] = key
    return run_agent_main(
        specs[0],
        url,
        config,
        concurrency=args.concurrency,
        version=args.version,
        data_dir=args.data_dir,
    )


def cmd_reclaim(args: argparse.Namespace) -> int:
    from cogo.runtime.reclaim import reclaim

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
        resolve_paths(args)
        return int(args.func(args) or 0)
    except CogoError as exc:
        print(f"cogo: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
