"""Least privilege on NATS: one user per actor kind, a ``client`` user, an ``admin``.

Each actor user may only pull from and ack its own consumers, publish to the subjects it
produces (routes, its events), use the KV / object buckets it needs, and receive replies
on its private inbox prefix ``_INBOX_<user>``. The ``client`` user may only submit to
``orchestrator.execute.*`` and read results (events). Only ``admin`` manages streams.

Passwords are generated once into ``<data-dir>/credentials.json`` (mode 0600), or taken
from ``COGO_NATS_PASSWORD_<USER>``; the server configuration that holds them is written to
the data dir, never to the repository.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from cogo.config import Config
from cogo.streams.envelope import EXECUTE_SUBJECT, RESULT_SUBJECT
from cogo.streams.topology import (
    ARTIFACT_BUCKET,
    DLQ,
    EVENTS,
    LEASE_BUCKET,
    MAX_DELIVERIES_ADVISORY,
    ORCHESTRATOR_ROUTES,
    POLICY_BUCKET,
    SCHEDULE_BUCKET,
    TASKS,
    durable_name,
)

API = "$JS.API"
ACCOUNT = "COGO"
USER_ENV = "COGO_NATS_USER"
PASSWORD_ENV = "COGO_NATS_PASSWORD"

# actor kind -> the routes whose consumers it pulls from (besides what config adds)
WORKER_ROUTES = {
    "echo": ["echo.run.0"],
    "codegen": ["codegen.generate.0"],
    "build_test": ["code.build-test.0"],
    "indexer": ["indexing.index.0"],
    "notifier": ["notify.webhook.0"],
}
USERS = ["admin", "client", "dispatcher", "orchestrator", "projector", *WORKER_ROUTES]


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def _consume(stream: str, consumer: str) -> list[str]:
    """Pull from and ack one durable consumer."""
    return [f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}", f"$JS.ACK.{stream}.{consumer}.>",
            f"{API}.CONSUMER.INFO.{stream}.{consumer}"]  # fmt: skip


def _read_kv(bucket: str) -> list[str]:
    """Read and watch a KV bucket (a watch is an ordered consumer with flow control)."""
    stream = f"KV_{bucket}"
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>", f"{API}.CONSUMER.DELETE.{stream}.>",
            f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.STREAM.MSG.GET.{stream}", f"$JS.FC.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.>"]  # fmt: skip


def _write_kv(bucket: str) -> list[str]:
    return [*_read_kv(bucket), f"$KV.{bucket}.>"]


def _objects(bucket: str, write: bool) -> list[str]:
    stream = f"OBJ_{bucket}"
    subjects = [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.MSG.GET.{stream}",
                f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
                f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
                f"{API}.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>",
                f"{API}.CONSUMER.INFO.{stream}.>",
                # ObjectStore.get subscribes without naming its stream: a name lookup
                f"{API}.STREAM.NAMES"]  # fmt: skip
    if write:
        subjects += [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>", f"{API}.STREAM.PURGE.{stream}"]
    return subjects


def _read_events() -> list[str]:
    """Read the event log: ephemeral consumers and direct gets on EVENTS only."""
    return [f"{API}.STREAM.INFO.{EVENTS}", f"{API}.CONSUMER.CREATE.{EVENTS}",
            f"{API}.CONSUMER.CREATE.{EVENTS}.>", f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.>",
            f"{API}.CONSUMER.DELETE.{EVENTS}.>", f"{API}.CONSUMER.INFO.{EVENTS}.>",
            f"{API}.STREAM.MSG.GET.{EVENTS}", f"$JS.FC.{EVENTS}.>"]  # fmt: skip


def _events(*types: str) -> list[str]:
    return [s for t in types for s in (f"events.{t}", f"events.{t}.>")]


def permissions(user: str, config: Config) -> dict[str, Any] | None:
    """The NATS permissions of ``user``; None means unrestricted (admin)."""
    if user == "admin":
        return None
    pub: list[str]
    sub = [f"{inbox_prefix(user)}.>"]
    if user == "client":
        pub = [f"orchestrator.execute.*", *_read_events()]  # noqa: F541 - a subject pattern
        sub += ["events.>"]
    elif user == "dispatcher":
        routes = [r for r in config.routes]
        pub = [
            *_consume(TASKS, durable_name(EXECUTE_SUBJECT)),
            *_consume(TASKS, durable_name(RESULT_SUBJECT)),
            *routes, *[f"{r}.*" for r in routes],  # baseline and versioned (canary) routes
            EXECUTE_SUBJECT,  # retries
            *_events("execute_enqueued", "execute_retry", "execute_failed", "execute_done",
                     "policy_bypassed"),
            "dlq.>", f"{API}.STREAM.MSG.GET.{TASKS}", f"{API}.STREAM.MSG.DELETE.{TASKS}",
            *_read_kv(POLICY_BUCKET), *_read_kv("rollouts"),
        ]  # fmt: skip
        sub += [f"{MAX_DELIVERIES_ADVISORY}.{TASKS}.*"]
    elif user == "orchestrator":
        pub = [
            *_consume(EVENTS, "orchestrator-events"),
            f"{API}.CONSUMER.DURABLE.CREATE.{EVENTS}.orchestrator-events",
            f"{API}.CONSUMER.CREATE.{EVENTS}.orchestrator-events",
            f"{API}.CONSUMER.CREATE.{EVENTS}.orchestrator-events.>",
            # one command queue per partition of runs; it pulls those whose lease it holds,
            # and publishes to any (forwarded outcomes, child starts, scheduled runs)
            *[s for r in ORCHESTRATOR_ROUTES for s in (
                *_consume(TASKS, durable_name(r)),
                f"{API}.CONSUMER.DURABLE.CREATE.{TASKS}.{durable_name(r)}",
                f"{API}.CONSUMER.CREATE.{TASKS}.{durable_name(r)}",
                f"{API}.CONSUMER.CREATE.{TASKS}.{durable_name(r)}.>")],
            EXECUTE_SUBJECT, "orchestrator.workflow.*",
            "events.*.wf.>",  # every workflow event: events.<type>.wf.<workflowId>.<runId>
            *_read_events(), *_read_kv(POLICY_BUCKET),
            *_write_kv(LEASE_BUCKET), *_write_kv(SCHEDULE_BUCKET),
        ]  # fmt: skip
    elif user == "projector":
        pub = [
            *_read_events(),
            *[f"{API}.{op}.{EVENTS}.projector" for op in ("CONSUMER.DURABLE.CREATE", "CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE")],
            *[f"{API}.{op}.{DLQ}.>" for op in ("CONSUMER.CREATE", "CONSUMER.DURABLE.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE", "CONSUMER.MSG.NEXT")],
            f"{API}.CONSUMER.CREATE.{DLQ}", f"{API}.STREAM.INFO.{DLQ}", f"$JS.ACK.{EVENTS}.>", f"$JS.ACK.{DLQ}.>",
            f"$JS.FC.{DLQ}.>",
        ]  # fmt: skip
    elif user in WORKER_ROUTES:
        routes = WORKER_ROUTES[user]
        pub = [RESULT_SUBJECT, *_events("artifact_stored", "code_file_indexed", "code_file_removed",
                                        "code_index_completed", "webhook_delivered")]  # fmt: skip
        for route in routes:
            pub += _consume(TASKS, durable_name(route))
            # Not granted: versioned (canary) consumers `<durable>-<version>`. NATS permissions
            # match whole tokens only, so `echo-run-0-*` would be a literal; a canary worker
            # under --auth needs a user the operator grants that consumer (COGO_NATS_USER).
        if user in ("codegen", "build_test"):
            pub += _objects(ARTIFACT_BUCKET, write=True)
        if user == "indexer":
            pub += [*_write_kv("code_index"), f"{API}.STREAM.CREATE.KV_code_index"]
    else:
        raise KeyError(user)
    return {"publish": {"allow": pub}, "subscribe": {"allow": sub}}


def credentials(data_dir: Path) -> dict[str, str]:
    """Every user's password: env ``COGO_NATS_PASSWORD_<USER>``, else generated once (0600)."""
    path = data_dir / "credentials.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for user in USERS:
        env = os.environ.get(f"{PASSWORD_ENV}_{user.upper()}")
        if env:
            stored[user] = env
        elif user not in stored:
            stored[user] = secrets.token_urlsafe(24)
            changed = True
    if changed or not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh, indent=2)
    return stored


def accounts_config(config: Config, passwords: dict[str, str]) -> str:
    """The ``accounts`` block for nats.conf: every user with its permissions."""
    users = []
    for user in USERS:
        entry: dict[str, Any] = {"user": user, "password": passwords[user]}
        perms = permissions(user, config)
        if perms is not None:
            entry["permissions"] = perms
        users.append(entry)
    block = {
        ACCOUNT: {"jetstream": "enabled", "users": users},
        "SYS": {"users": [{"user": "system", "password": passwords["admin"] + "-sys"}]},
    }
    # nats.conf accepts JSON syntax for values
    return f"\naccounts: {json.dumps(block, indent=2)}\nsystem_account: SYS\n"
