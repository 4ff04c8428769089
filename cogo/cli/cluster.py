"""``cogo cluster``: run Cogo on a JetStream cluster of several hosts.

cogo cluster config HOST HOST HOST ... --out DIR --store-size 60GB [--auth] [--no-tls]
cogo cluster replicas N      change every Cogo stream and consumer to N replicas
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogo.config import NATS_URL_ENV, load_config


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    cluster = subparsers.add_parser("cluster", help="a JetStream cluster across hosts")
    sub = cluster.add_subparsers(dest="cluster_command", required=True)

    p = sub.add_parser(
        "config",
        help="write each node's nats.conf (TLS, auth, store size) and what Cogo hosts need",
        description="Write <out>/cogo-N/nats.conf for every HOST (an address "
        "the others reach it at), <out>/tls (a CA and a certificate per host, made with "
        "openssl), <out>/cogo.toml, <out>/cogo.env and with --auth <out>/credentials.json.",
    )
    common(p)
    p.add_argument("hosts", nargs="+", metavar="HOST", help="IP address or DNS name of a node")
    p.add_argument("--out", type=Path, required=True, help="directory to write to")
    p.add_argument(
        "--store-size",
        default="64GB",
        help="each node's JetStream max_file_store (default 64GB); checked against what Cogo's streams reserve",
    )
    p.add_argument(
        "--store-dir", default="/var/lib/cogo/nats", help="JetStream store dir on each host ({node} is the node's name)"
    )
    p.add_argument("--tls-dir", default=None, help="where <out>/tls will be on the hosts (default: <out>/tls)")
    p.add_argument("--no-tls", action="store_true", help="plain TCP for clients and routes")
    p.add_argument(
        "--auth",
        action="store_true",
        help="users and permissions (least privilege), passwords in "
        "<out>/credentials.json and <out>/credentials/<user>.env",
    )
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="an app whose agents get users under --auth (repeatable)",
    )
    p.add_argument("--replicas", type=int, default=3, help="written to cogo.toml (default 3)")
    p.add_argument("--client-port", type=int, default=4222)
    p.add_argument("--cluster-port", type=int, default=6222)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "replicas",
        help="change every Cogo stream and consumer to N replicas",
        description="The cluster keeps the replicas its streams were made with; "
        "no process lowers them. This is the one way to change them.",
    )
    common(p)
    p.add_argument("replicas", type=int, metavar="N")
    p.set_defaults(func=cmd_replicas)


def cmd_config(args: argparse.Namespace) -> int:
    from cogo.streams import auth as auth_module
    from cogo.streams.cluster import parse_size, write_cluster

    config = load_config(args.config, args.data_dir)
    accounts, passwords = "", None
    if args.auth:
        from cogo.runtime.loader import apps_for_up

        decls = [d for loaded in apps_for_up(config, args.app) for d in loaded.app.declarations()]
        plan = auth_module.AuthPlan.from_decls(decls)
        args.out.mkdir(parents=True, exist_ok=True)
        # generated once into <out>/credentials.json (or COGO_NATS_PASSWORD_<USER>)
        passwords = auth_module.credentials(args.out, plan.users)
        accounts = auth_module.accounts_config(plan, passwords)
    files = write_cluster(
        args.out,
        args.hosts,
        config,
        store_size=parse_size(args.store_size),
        store_dir=args.store_dir,
        tls=not args.no_tls,
        tls_dir=args.tls_dir,
        auth_users=passwords,
        accounts=accounts,
        replicas=args.replicas,
        client_port=args.client_port,
        cluster_port=args.cluster_port,
    )
    if passwords is not None:
        auth_module.write_user_env_files(args.out / "credentials", passwords)
    for node, host in zip(files.nodes, args.hosts, strict=True):
        print(f"{host}: nats-server -c {node}")
    print(f"every Cogo host: --config {files.cogo_toml}, environment {files.env_file}")
    print(f"  {NATS_URL_ENV}={files.nats_url}")
    if files.credentials:
        print(
            f"cogo up hosts: copy {files.credentials} into the data dir; a `cogo run AGENT` "
            f"host: {args.out / 'credentials'}/<its user>.env"
        )
    return 0


def cmd_replicas(args: argparse.Namespace) -> int:
    from cogo.cli.common import bus
    from cogo.streams.topology import set_replicas

    async def main() -> int:
        async with bus(args, "cogo-cluster") as nc:
            changed = await set_replicas(nc.jetstream(), args.replicas)
        print("\n".join(changed) if changed else f"already at {args.replicas} replica(s)")
        return 0

    return asyncio.run(main())
