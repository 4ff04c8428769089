"""Least privilege on NATS: a user per built-in actor kind, one per app, ``client``, ``admin``.

Each worker user may only pull from and ack its own consumers (its routes', and the
versioned consumers ``cogo up`` granted it), publish what it produces (results, its events),
and an app's user only for its own routes: ``results.<route>``, ``events.<type>.<route>``
(the step journal included) for each route it owns, so no app can speak for another's
tasks; what permissions cannot see (message ids, what a message says) is covered by the
dispatcher's seal (``cogo.streams.seal``). Nobody but ``admin`` may purge the artifacts
bucket, and only the dispatcher publishes retries (``orchestrator.retry.0``, ``schedules.>``).
Workers use the buckets it needs, ask ``cogo up`` for a version's consumer
(``cogo.control.version.<user>``) and receive replies on its private inbox prefix
``_INBOX_<user>``. A team's app gets one user, ``app-<name>``, for all its agents. The
``client`` user may only submit to ``orchestrator.execute.*``, read events, look routes up
and ask for a task's status. Only ``admin`` manages streams.

The plan is derived from the routes the loaded apps declare (``AuthPlan.from_decls``), so a
new agent is granted what it needs without editing this file. Passwords are generated once
into ``<data-dir>/credentials.json`` (mode 0600), or taken from ``COGO_NATS_PASSWORD_<USER>``;
the server configuration that holds them is written to the data dir, never to the repository.
NATS permissions match whole subject tokens, so a versioned consumer (``echo-run-0-v2``)
cannot be granted by a wildcard: ``cogo up`` adds it to the user's grants when the versioned
worker asks, stores it in ``<data-dir>/grants.json`` and reloads the server's configuration.
Grants are bounded (``MAX_VERSIONS_PER_ROUTE``; an idle older version is retired to make
room) and rate-limited per user (``GRANT_BURST`` per ``GRANT_WINDOW_S``).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogo.config import NATS_PASSWORD_ENV, NATS_USER_ENV, env, nats_password_env
from cogo.errors import ConfigError, VersionGrantRefused
from cogo.secretfile import write_private_json
from cogo.streams.permissions import permissions
from cogo.streams.routes import RouteDecl
from cogo.streams.seal import SEAL_KEY_ENV

ACCOUNT = "COGO"
USER_ENV, PASSWORD_ENV = NATS_USER_ENV, NATS_PASSWORD_ENV
BUILTIN_APP = "cogo"
# users that are not task workers, with permissions of their own
SYSTEM_USERS = ["admin", "client", "dispatcher", "orchestrator", "projector"]
# version grants: each one is a consumer and a reload of the server's configuration
MAX_VERSIONS_PER_ROUTE = 8
GRANT_BURST, GRANT_WINDOW_S = 4, 60.0  # new grants per user in any such window
SEAL_ENTRY = "@seal"  # the seal key's entry in credentials.json (no user has this name)
# who gets the seal key under --auth: the dispatchers (and cogo up's own HTTP facade)
SEAL_HOLDERS = {"dispatcher"}


def user_of(app: str, agent: str) -> str:
    """The NATS user an agent runs as: its kind for Cogo's own, ``app-<name>`` for an app."""
    return agent if app == BUILTIN_APP else f"app-{app}"


@dataclass
class AuthPlan:
    """Who consumes which routes: derived from the declared routes of every loaded app."""

    workers: dict[str, list[str]] = field(default_factory=dict)  # user -> task routes
    versions: dict[str, list[str]] = field(default_factory=dict)  # user -> granted versions
    _grant_times: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_decls(cls, decls: Sequence[RouteDecl]) -> AuthPlan:
        plan = cls()
        for decl in decls:
            if decl.task:
                plan.workers.setdefault(user_of(decl.app, decl.agent), []).append(decl.route)
        return plan

    @property
    def users(self) -> list[str]:
        return [*SYSTEM_USERS, *self.workers]

    @property
    def task_routes(self) -> list[str]:
        return [route for routes in self.workers.values() for route in routes]

    def owner(self, route: str) -> str | None:
        return next((u for u, routes in self.workers.items() if route in routes), None)

    def grant_version(self, user: str, versioned_route: str, now: float | None = None) -> bool:
        """Add a versioned consumer to ``user``'s grants; False if it already had it.

        Each new grant rewrites the server's configuration and reloads it, and leaves a
        consumer behind: ``VersionGrantRefused`` past ``MAX_VERSIONS_PER_ROUTE`` versions of
        one route, or past ``GRANT_BURST`` new grants in ``GRANT_WINDOW_S`` for one user.
        """
        granted = self.versions.setdefault(user, [])
        if versioned_route in granted:
            return False
        self.check_version_grant(user, versioned_route, now)
        granted.append(versioned_route)
        self._grant_times.setdefault(user, []).append(time.time() if now is None else now)
        return True

    def check_version_grant(self, user: str, versioned_route: str, now: float | None = None) -> None:
        """``VersionGrantRefused`` if a new grant of ``versioned_route`` would pass a bound."""
        self.check_grant_rate(user, now)
        route = versioned_route.rsplit(".", 1)[0]
        held = self.versions_of(user, route)
        if len(held) >= MAX_VERSIONS_PER_ROUTE:
            raise VersionGrantRefused(
                f"{user!r} already holds {len(held)} versions of {route!r} (at most "
                f"{MAX_VERSIONS_PER_ROUTE}) and none is idle; retire one that has no work left"
            )

    def check_grant_rate(self, user: str, now: float | None = None) -> None:
        """``VersionGrantRefused`` if ``user`` had ``GRANT_BURST`` new grants in the window."""
        now = time.time() if now is None else now
        recent = [t for t in self._grant_times.get(user, []) if t > now - GRANT_WINDOW_S]
        self._grant_times[user] = recent
        if len(recent) >= GRANT_BURST:
            wait = recent[0] + GRANT_WINDOW_S - now
            raise VersionGrantRefused(
                f"{user!r} was granted {len(recent)} versions in the last {GRANT_WINDOW_S:.0f} s "
                f"(at most {GRANT_BURST}); ask again in {max(1, math.ceil(wait))} s"
            )

    def versions_of(self, user: str, route: str) -> list[str]:
        """The versioned consumers of ``route`` granted to ``user``, oldest first."""
        return [v for v in self.versions.get(user, []) if v.rsplit(".", 1)[0] == route]

    def revoke_version(self, user: str, versioned_route: str) -> None:
        """Drop a versioned consumer from ``user``'s grants."""
        if versioned_route in self.versions.get(user, []):
            self.versions[user].remove(versioned_route)


def credentials(data_dir: Path, users: Sequence[str]) -> dict[str, str]:
    """Every user's password: env ``COGO_NATS_PASSWORD_<USER>``, else generated once (0600)."""
    path = data_dir / "credentials.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for user in users:
        given = env(nats_password_env(user))
        if given:
            stored[user] = given
        elif user not in stored:
            stored[user] = secrets.token_urlsafe(24)
            changed = True
    if changed or not path.exists():
        write_private_json(path, stored)
    return stored


def seal_key(data_dir: Path) -> str:
    """The dispatcher's seal key (``cogo.streams.seal``): ``COGO_SEAL_KEY``, else generated
    once into ``credentials.json`` (0600) beside the passwords."""
    given = env(SEAL_KEY_ENV)
    if given:
        return given
    path = data_dir / "credentials.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if SEAL_ENTRY not in stored:
        stored[SEAL_ENTRY] = secrets.token_urlsafe(32)
        write_private_json(path, stored)
    return stored[SEAL_ENTRY]


def stored_seal_key(data_dir: Path) -> str | None:
    """The seal key ``cogo up --auth`` generated into ``credentials.json``, if any."""
    try:
        stored = json.loads((data_dir / "credentials.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    key = stored.get(SEAL_ENTRY) if isinstance(stored, dict) else None
    return key if isinstance(key, str) else None


def existing_credentials(data_dir: Path, users: Sequence[str]) -> dict[str, str]:
    """Every user's password for a cluster whose users were generated elsewhere
    (``cogo cluster config --auth``): env ``COGO_NATS_PASSWORD_<USER>``, else
    ``<data-dir>/credentials.json``; ConfigError naming what is missing, never a new one."""
    path = data_dir / "credentials.json"
    try:
        stored: dict[str, str] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        stored = {}
    found = {u: env(nats_password_env(u)) or stored.get(u, "") for u in users}
    missing = [u for u, password in found.items() if not password]
    if missing:
        raise ConfigError(
            f"`cogo up --auth --nats-url` joins a cluster whose users were made by `cogo cluster "
            f"config --auth`: copy its credentials.json into {data_dir} (or set "
            f"{nats_password_env(missing[0])} and the like); no password for {', '.join(missing)}"
        )
    return found


def write_user_env_files(out: Path, passwords: dict[str, str]) -> None:
    """``<out>/<user>.env`` (0600): what a host running one agent kind needs, and no more."""
    out.mkdir(parents=True, exist_ok=True)
    for user, password in passwords.items():
        path = out / f"{user}.env"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(f"{USER_ENV}={user}\n{PASSWORD_ENV}={password}\n")


def load_grants(data_dir: Path) -> dict[str, list[str]]:
    try:
        return json.loads((data_dir / "grants.json").read_text())  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError):
        return {}


def save_grants(data_dir: Path, grants: dict[str, list[str]]) -> None:
    write_private_json(data_dir / "grants.json", grants)


def accounts_config(plan: AuthPlan, passwords: dict[str, str]) -> str:
    """The ``accounts`` block for nats.conf: every user of ``plan`` with its permissions."""
    users = []
    for user in plan.users:
        entry: dict[str, Any] = {"user": user, "password": passwords[user]}
        perms = permissions(user, plan)
        if perms is not None:
            allow_responses = perms.pop("allow_responses", None)
            entry["permissions"] = perms
            if allow_responses:
                entry["permissions"]["allow_responses"] = True
        users.append(entry)
    block = {
        ACCOUNT: {"jetstream": "enabled", "users": users},
        "SYS": {"users": [{"user": "system", "password": passwords["admin"] + "-sys"}]},
    }
    # nats.conf accepts JSON syntax for values
    return f"\naccounts: {json.dumps(block, indent=2)}\nsystem_account: SYS\n"
