"""``cogo workflow ...``: run, inspect and cancel workflows of a running ``cogo up``.

cogo workflow run    <workflowId> [-p key=value ...] [--params JSON] [--wait]
cogo workflow run    --file definition.json [-p ...] [--wait]
cogo workflow plan   <workflowId> [-p key=value ...]
cogo workflow state  <runId>
cogo workflow list   [--workflow ID] [--status S] [--limit N] [--json]
cogo workflow cancel <runId> [--reason TEXT]
cogo workflow signal <runId> <name> [--data JSON] [--signal-id ID]
cogo workflow defs

cogo schedule add    <id> <workflowId> (--cron EXPR | --every SECONDS) [-p ...] [--params JSON]
                     [--catchup none|last|all] [--max-catchup N]
cogo schedule list   [--json]
cogo schedule delete <id>

The commands talk to the HTTP facade named in ``<data-dir>/endpoints.json`` (or
``--http-url``), with ``Authorization: Bearer <api_token>``. ``-p`` values are JSON when
they parse as JSON (``-p full=true``, ``-p n=3``), strings otherwise. ``run --wait``
prints one JSON document, the run's final state (exit 0 if it succeeded, 1 if not, 2 if it
did not end in time).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cogo.cli.common import RemoteError
from cogo.config import API_TOKEN_ENV, HTTP_URL_ENV, env
from cogo.errors import CogoError


def register(subparsers: Any, common: Any) -> None:
    """Add ``workflow`` and its subcommands to the ``cogo`` parser."""
    command = _group(subparsers, common, "workflow", "run, inspect and cancel workflows")

    p = command("run", "start a run; --wait to follow it to the end")
    p.add_argument("workflow_id", nargs="?", help="a workflow id (see `cogo workflow defs`)")
    p.add_argument("--file", type=Path, help="run this definition file (JSON) instead")
    _parameter_arguments(p)
    p.add_argument("--run-id", default=None, help="choose the run id (idempotent)")
    p.add_argument("--wait", action="store_true", help="wait for the run to end")
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=cmd_run)

    p = command("plan", "validate and show the resolved plan; nothing runs")
    p.add_argument("workflow_id", nargs="?")
    p.add_argument("--file", type=Path)
    _parameter_arguments(p)
    p.set_defaults(func=cmd_plan)

    p = command("state", "a run's status, nodes, gate verdicts and artifacts")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_state)

    p = command("list", "runs, newest first")
    p.add_argument("--workflow", default=None)
    p.add_argument("--status", default=None, choices=["running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = command("cancel", "cancel a run (running tasks finish; nothing new starts)")
    p.add_argument("run_id")
    p.add_argument("--reason", default=None)
    p.set_defaults(func=cmd_cancel)

    p = command("signal", "send a signal to a run (e.g. an approval); early signals are kept")
    p.add_argument("run_id")
    p.add_argument("name", help="the signal node's name")
    p.add_argument("--data", default="null", help="JSON: the signal node's result")
    p.add_argument("--signal-id", default=None, help="idempotency key (default: random)")
    p.set_defaults(func=cmd_signal)

    p = command("defs", "the workflow definitions and their parameters (and files that fail)")
    p.add_argument("--json", action="store_true", help="print the API's JSON document")
    p.set_defaults(func=cmd_defs)

    _register_schedules(subparsers, common)


def _register_schedules(subparsers: Any, common: Any) -> None:
    command = _group(subparsers, common, "schedule", "run workflows on a cron or an interval")

    p = command("add", "create or replace a schedule")
    p.add_argument("id")
    p.add_argument("workflow_id")
    clock = p.add_mutually_exclusive_group(required=True)
    clock.add_argument("--cron", help="cron expression, UTC (5 fields, or 6 with seconds last)")
    clock.add_argument("--every", type=int, metavar="SECONDS", help="interval in seconds")
    p.add_argument(
        "--catchup",
        choices=["none", "last", "all"],
        default="last",
        help="missed ticks: none, the last one (default), or all (bounded)",
    )
    p.add_argument("--max-catchup", type=int, default=100)
    _parameter_arguments(p)
    p.set_defaults(func=cmd_schedule_add)

    p = command("list", "schedules, their last and next ticks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule_list)

    p = command("delete", "delete a schedule (runs it started go on)")
    p.add_argument("id")
    p.set_defaults(func=cmd_schedule_delete)


def _group(subparsers: Any, common: Any, name: str, help: str) -> Callable[[str, str], argparse.ArgumentParser]:
    """A command group whose subcommands talk to the facade; returns their factory."""
    parser = subparsers.add_parser(name, help=help)
    sub = parser.add_subparsers(dest=f"{name}_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        common(p)
        p.add_argument(
            "--http-url", default=env(HTTP_URL_ENV), help="the facade; default: the running `cogo up` in --data-dir"
        )
        return p

    return command


def _parameter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; the value is JSON if it parses, else a string",
    )
    p.add_argument("--params", default=None, help="all parameters as one JSON object")


def parameters_of(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise CogoError(f"--params is not valid JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise CogoError("--params must be a JSON object")
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CogoError(f"-p expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


class Facade:
    """The HTTP facade of a running ``cogo up``."""

    def __init__(self, args: argparse.Namespace) -> None:
        from cogo.endpoints import read_endpoints

        endpoints = read_endpoints(args.data_dir)
        url = args.http_url or (endpoints.http_url if endpoints else None)
        if not url:
            raise CogoError(f"no --http-url and no running `cogo up` in {args.data_dir} (endpoints.json)")
        token = env(API_TOKEN_ENV) or (endpoints.api_token if endpoints else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CogoError(f"cannot reach the facade: {exc}") from exc
        if response.status_code >= 400:
            raise RemoteError(
                f"{method} {path} -> {response.status_code}: {_detail(response)}",
                _code(response),
            )
        return response.json()


def _code(response: httpx.Response) -> str:
    """The API's own error code (``workflow.not_found``...), not a generic one."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        code = None
    return str(code) if code else f"http.{response.status_code}"


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500]
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail)


def _target(args: argparse.Namespace) -> dict[str, Any]:
    if args.file is not None:
        try:
            return {"definition": json.loads(args.file.read_text())}
        except (OSError, json.JSONDecodeError) as exc:
            raise CogoError(f"cannot read {args.file}: {exc}") from exc
    if not args.workflow_id:
        raise CogoError("name a workflow id or give --file")
    return {"workflowId": args.workflow_id}


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    facade = Facade(args)
    body = {**_target(args), "parameters": parameters_of(args)}
    if args.run_id:
        body["runId"] = args.run_id
    started = facade.call("POST", "/api/orchestrator/execute", json=body)
    if not args.wait:
        print(json.dumps(started))
        return 0
    # one document on stdout: the final state (or the last one seen), never two
    deadline = time.monotonic() + args.timeout
    state: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            state = facade.call("GET", "/api/orchestrator/state", params={"runId": started["runId"]})
        except CogoError:  # 404 until the orchestrator has taken the start command
            state = None
        if state and state.get("endedAt"):
            _print(state)
            return 0 if state["status"] == "succeeded" else 1
        time.sleep(0.5)
    _print(state or {**started, "status": "queued"})
    print(f"run {started['runId']} did not end within {args.timeout}s", file=sys.stderr)
    return 2


def cmd_plan(args: argparse.Namespace) -> int:
    body = {**_target(args), "parameters": parameters_of(args)}
    _print(Facade(args).call("POST", "/api/orchestrator/plan", json=body))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    _print(Facade(args).call("GET", "/api/orchestrator/state", params={"runId": args.run_id}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.workflow:
        params["workflowId"] = args.workflow
    if args.status:
        params["status"] = args.status
    runs = Facade(args).call("GET", "/api/orchestrator/runs", params=params)["runs"]
    if args.json:
        _print(runs)
        return 0
    for run in runs:
        duration = f"{run['durationMs'] / 1000:.1f}s" if run["durationMs"] is not None else "-"
        print(
            f"{run['runId']:<34} {run['workflowId'] or '-':<20} {run['status']:<10} "
            f"{run['startedAt'] or '-':<28} {duration:>8}  {run['error'] or ''}"
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    body = {"runId": args.run_id, "reason": args.reason}
    print(json.dumps(Facade(args).call("POST", "/api/orchestrator/cancel", json=body)))
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise CogoError(f"--data is not valid JSON: {exc}") from exc
    body: dict[str, Any] = {"runId": args.run_id, "name": args.name, "data": data}
    if args.signal_id:
        body["signalId"] = args.signal_id
    print(json.dumps(Facade(args).call("POST", "/api/orchestrator/signal", json=body)))
    return 0


def cmd_defs(args: argparse.Namespace) -> int:
    workflows = Facade(args).call("GET", "/api/workflows")["workflows"]
    if args.json:
        _print(workflows)
    else:  # one line a definition: what loads, and with which parameters
        for w in workflows:
            if w.get("error"):
                continue
            params = ", ".join(
                f"{name}{'*' if spec.get('required') else ''}" for name, spec in (w.get("parameters") or {}).items()
            )
            print(f"{w['id']:<24} v{w.get('version') or 1}  {w.get('description', '')}".rstrip())
            if params:
                print(f"{'':<24}     parameters: {params}  (* required)")
    for broken in (w for w in workflows if w.get("error")):
        print(f"cogo: workflow {broken['id']} does not load: {broken['error']}", file=sys.stderr)
    return 0


def cmd_schedule_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "id": args.id,
        "workflowId": args.workflow_id,
        "parameters": parameters_of(args),
        "catchup": args.catchup,
        "max_catchup": args.max_catchup,
    }
    if args.cron:
        body["cron"] = args.cron
    else:
        body["interval_s"] = args.every
    _print(Facade(args).call("POST", "/api/schedules", json=body))
    return 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    schedules = Facade(args).call("GET", "/api/schedules")["schedules"]
    if args.json:
        _print(schedules)
        return 0
    for s in schedules:
        clock = f"cron {s['cron']}" if s.get("cron") else f"every {s['interval_s']}s"
        print(
            f"{s['id']:<24} {s['workflowId']:<20} {clock:<24} next {s['nextTick']}  "
            f"fired {s['fired']}  last {s['lastRunId'] or '-'}"
            + (f"  error {s['lastError']}" if s.get("lastError") else "")
        )
    return 0


def cmd_schedule_delete(args: argparse.Namespace) -> int:
    print(json.dumps(Facade(args).call("DELETE", f"/api/schedules/{args.id}")))
    return 0
