"""``cogo submit``, ``cogo status``, ``cogo policy``, ``cogo routes``: tasks, policies and
routes of a running system."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogo.cli.common import bus, nats_credentials, resolve_nats_url
from cogo.errors import CogoError

if TYPE_CHECKING:
    from cogo.sdk.client import Client


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


def client_of(args: argparse.Namespace, name: str) -> Client:
    """The ``cogo.Client`` a task command uses: the system of ``args``, as its ``client``
    user when the data dir holds credentials (``cogo up --auth``)."""
    from cogo.sdk.client import Client

    creds = nats_credentials(args, "client")
    return Client(resolve_nats_url(args), user=creds.get("user"), password=creds.get("password"), name=name)


def cmd_submit(args: argparse.Namespace) -> int:
    import msgspec

    payload = read_payload(args.payload)

    async def main() -> int:
        async with client_of(args, "cogo-submit") as client:
            handle = await client.submit(args.route, payload, task_id=args.task_id)
            # the same document as POST /api/tasks answers
            print(
                json.dumps({"task_id": handle.task_id, "duplicate": handle.duplicate, "stream_seq": handle.seq}),
                flush=True,
            )
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
            # the waiter may have seen the terminal event before the projector did: print
            # the projector's document (events, usage), as `cogo status` would a moment later
            with contextlib.suppress(CogoError):
                final = await client.status(handle.task_id)
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

    async def main() -> int:
        async with client_of(args, "cogo-status") as client:
            status = await client.status(args.task_id)
        print(json.dumps(msgspec.to_builtins(status), indent=2))
        return 0

    return asyncio.run(main())


def cmd_signal(args: argparse.Namespace) -> int:
    """``cogo signal TASK NAME --data JSON``: wake the task's ``ctx.wait_signal(NAME)``."""
    from cogo.errors import RequestInvalid

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise RequestInvalid(f"--data is not JSON: {exc}") from None

    async def main() -> int:
        async with client_of(args, "cogo-signal") as client:
            await client.signal(args.task_id, args.name, data)
        print(json.dumps({"task_id": args.task_id, "name": args.name, "sent": True}))
        return 0

    return asyncio.run(main())


def cmd_cancel(args: argparse.Namespace) -> int:
    """``cogo cancel TASK``: cancel a task and its descendants."""

    async def main() -> int:
        async with client_of(args, "cogo-cancel") as client:
            await client.cancel(args.task_id, args.reason)
        print(json.dumps({"task_id": args.task_id, "cancelled": True}))
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
                rows.append(
                    {
                        "route": route,
                        "app": record.app,
                        "agent": record.agent,
                        "pending": info.num_pending if info else None,
                        "in_flight": info.num_ack_pending if info else None,
                        # pull requests waiting on the route's consumer: workers ready for tasks
                        "pulling": info.num_waiting if info else 0,
                        "overrides": record.overrides or None,
                    }
                )
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    print(
                        f"{row['route']:<28} {row['app'] or '-':<12} {row['agent'] or '-':<16} "
                        f"pending={row['pending']} in_flight={row['in_flight']} "
                        + (f"workers_pulling={row['pulling']}" if row["pulling"] else "no worker pulling")
                        + ("  (policy overridden at runtime)" if row["overrides"] else "")
                    )
            return 0

    return asyncio.run(main())
