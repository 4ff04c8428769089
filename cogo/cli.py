"""The ``cogo`` command.

cogo up       [--data-dir DIR] [--nats-port N] [--http-port N] [--nats-url URL] [--sync S]
cogo run      <actor> [--replicas N] [--version V] [--nats-url URL]
cogo submit   --route ROUTE [--payload JSON] [--task-id ID] [--wait]
cogo policy   get|set|list ...
cogo reclaim  [--dead-letter]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
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
                   help="least privilege: one NATS user per actor kind, passwords in the data dir")  # fmt: skip
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("run", help="run one actor kind in this process (or N processes)")
    _common(p)
    p.add_argument("actor")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--version", default=None, help="version this worker declares")
    p.add_argument("--concurrency", type=int, default=None)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit a task to orchestrator.execute.0")
    _common(p)
    p.add_argument("--route", required=True)
    p.add_argument("--payload", default="{}", help="JSON object")
    p.add_argument("--task-id", default=None)
    p.add_argument("--wait", action="store_true", help="wait for the terminal event")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("policy", help="read or change route policies at runtime")
    _common(p)
    p.add_argument("action", choices=["get", "set", "list"])
    p.add_argument("route", nargs="?")
    p.add_argument("changes", nargs="?", help='JSON, e.g. \'{"ceilings": {"max_tokens": 1000}}\'')
    p.set_defaults(func=cmd_policy)

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


def cmd_up(args: argparse.Namespace) -> int:
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
    )
    _use_uvloop()
    asyncio.run(run_up(system))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cogo.actors import ACTORS
    from cogo.actors.runner import run_actor_main, run_replicas

    if args.actor not in ACTORS:
        raise CogoError(f"unknown actor {args.actor!r}; known: {', '.join(sorted(ACTORS))}")
    url = resolve_nats_url(args)
    if args.replicas > 1:
        return run_replicas(
            args.actor, args.replicas, url, config_path=args.config, data_dir=args.data_dir,
            version=args.version, concurrency=args.concurrency,
        )  # fmt: skip
    config = load_config(args.config, args.data_dir)
    creds = nats_credentials(args, args.actor)
    if creds:  # the actor's own user, handed to the process through its environment
        os.environ["COGO_NATS_USER"], os.environ["COGO_NATS_PASSWORD"] = (
            creds["user"],
            creds["password"],
        )
    return run_actor_main(
        args.actor, url, config, concurrency=args.concurrency, version=args.version,
        data_dir=args.data_dir,
    )  # fmt: skip


def cmd_submit(args: argparse.Namespace) -> int:
    from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID, encoder, new_id

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise CogoError(f"--payload is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise CogoError("--payload must be a JSON object")
    task_id = args.task_id or new_id()

    async def main() -> int:
        from cogo.actors.runner import connect
        from cogo.streams.events import decode_event

        nc = await connect(
            resolve_nats_url(args), "cogo-submit", **nats_credentials(args, "client")
        )
        try:
            js = nc.jetstream()
            sub = None
            if args.wait:
                sub = await nc.subscribe(f"events.*.{args.route}")
            body = {"task_id": task_id, "route": args.route, "payload": payload}
            ack = await js.publish(
                EXECUTE_SUBJECT, encoder.encode(body), headers={MSG_ID: task_id}, timeout=10
            )
            print(json.dumps({"task_id": task_id, "duplicate": ack.duplicate, "seq": ack.seq}))
            if sub is None:
                return 0
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                event = decode_event(msg.data)
                if event.task_id == task_id and event.type in ("execute_done", "execute_failed"):
                    print(msg.data.decode())
                    return 0 if event.type == "execute_done" else 1
            print(f"no terminal event for {task_id} within {args.timeout}s", file=sys.stderr)
            return 2
        finally:
            await nc.close()

    return asyncio.run(main())


def cmd_policy(args: argparse.Namespace) -> int:
    import msgspec

    from cogo.streams.policies import read_policy, set_policy
    from cogo.streams.topology import POLICY_BUCKET

    async def main() -> int:
        from cogo.actors.runner import connect

        nc = await connect(resolve_nats_url(args), "cogo-policy", **nats_credentials(args, "admin"))
        try:
            js = nc.jetstream()
            if args.action == "list":
                kv = await js.key_value(POLICY_BUCKET)
                for key in sorted(await kv.keys()):
                    print(key)
                return 0
            if not args.route:
                raise CogoError("policy get/set needs a route")
            if args.action == "get":
                policy = await read_policy(js, args.route)
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
        finally:
            await nc.close()

    return asyncio.run(main())


def cmd_reclaim(args: argparse.Namespace) -> int:
    from cogo.actors.reclaim import reclaim

    async def main() -> int:
        from cogo.actors.runner import connect

        nc = await connect(
            resolve_nats_url(args), "cogo-reclaim", **nats_credentials(args, "admin")
        )
        try:
            report = await reclaim(nc, load_config(args.config, args.data_dir), args.dead_letter)
            print(json.dumps(report, indent=2))
            return 0
        finally:
            await nc.close()

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
