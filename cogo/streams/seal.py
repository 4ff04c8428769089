"""Who may speak for a task: sealed work orders, per-task tokens, guarded message ids.

Under ``cogo up --auth`` every app has its own NATS user, and the server's permissions keep
each app's workers to their own routes' subjects (``cogo.streams.auth``). Permissions alone
cannot cover what travels *inside* a message or a header, so the dispatcher also holds a
secret key (``COGO_SEAL_KEY``; ``cogo up --auth`` generates it into ``credentials.json``
and hands it to its dispatchers and its HTTP facade only) and uses it three ways:

- **Sealed orders.** Every ``WorkOrder`` the dispatcher sends carries ``seal``, a MAC
  (keyed BLAKE2b, 256 bits) of the order's own encoding. A worker reports its attempt with the order it
  was given (``WorkResult.order``); the dispatcher counts a result only when that order's
  seal verifies. A forged or altered order (another app's task id, a reset
  ``usage_so_far``, a raised ``max_tokens``) is refused, and so is a retry order that the
  dispatcher did not make.
- **Per-task tokens.** Each order carries ``token = MAC(key, "task:" + task_id)``, known
  only to the dispatcher and the route's worker. Message ids a task's records are
  de-duplicated by (``<task>:<attempt>:result``, ``<task>:step:<name>``, ``<task>:terminal``,
  ``<task>:end``...) go out *guarded*: ``<id>~<MAC(token, id)[:16]>``. De-duplication is
  stream-wide, whatever the subject, so an unguarded id lets anyone who may publish anywhere
  on the stream pre-empt the genuine record (it would be dropped as a duplicate). The
  ``event_id`` inside each event is unchanged.
- **Output MACs.** Each message on ``outputs.<task_id>`` carries ``Cogo-Mac: MAC(out_token,
  body)``, ``out_token = MAC(output_key, task_id)`` with ``output_key = MAC(key,
  "outputs")``. Readers (the HTTP facade, ``TaskHandle.stream``) hold ``output_key`` only:
  they can verify any task's output and forge none of the other records. A chunk or an end
  marker without a valid MAC is never shown.

Without a key (``cogo up`` without ``--auth``: every client may publish anything anyway)
nothing is sealed, tokens are empty and ids are published as they are. Cost per task: two
encodings of the order and a few MACs, measured by ``cogo bench --seal-tasks``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import msgspec

from cogo.config import OUTPUT_KEY_ENV, SEAL_KEY_ENV, env

if TYPE_CHECKING:
    from cogo.streams.envelope import WorkOrder

__all__ = [
    "GUARD",
    "MAC_HEADER",
    "OUTPUT_KEY_ENV",
    "SEAL_KEY_ENV",
    "OutputVerifier",
    "Sealer",
    "guard_id",
    "output_mac",
]
MAC_HEADER = "Cogo-Mac"
GUARD = "~"  # separates a message id from its guard
_encoder = msgspec.json.Encoder()


def _mac(key: bytes, data: bytes) -> str:
    # keyed BLAKE2b is a MAC by design (no HMAC construction needed), and about three
    # times quicker than HMAC-SHA256 on these short inputs; it takes keys up to 64 bytes
    if len(key) > 64:
        key = hashlib.blake2b(key).digest()
    return hashlib.blake2b(data, key=key, digest_size=32).hexdigest()


def guard_id(token: str | None, msg_id: str) -> str:
    """``msg_id`` as published: guarded by the task's token, or as it is without one."""
    if not token:
        return msg_id
    return f"{msg_id}{GUARD}{_mac(token.encode(), msg_id.encode())[:16]}"


def output_mac(out_token: str, data: bytes) -> str:
    return _mac(out_token.encode(), data)


class OutputVerifier:
    """Checks ``Cogo-Mac`` on a task's output messages (readers hold only ``output_key``)."""

    def __init__(self, output_key: str) -> None:
        self._key = output_key.encode()

    @classmethod
    def from_env(cls) -> OutputVerifier | None:
        key = env(OUTPUT_KEY_ENV) or ""
        seal = env(SEAL_KEY_ENV) or ""
        if not key and seal:
            key = Sealer(seal).output_key
        return cls(key) if key else None

    def out_token(self, task_id: str) -> str:
        return _mac(self._key, task_id.encode())

    def valid(self, task_id: str, data: bytes, headers: dict[str, str] | None) -> bool:
        given = (headers or {}).get(MAC_HEADER, "")
        return bool(given) and hmac.compare_digest(given, output_mac(self.out_token(task_id), data))


class Sealer:
    """The dispatcher's key: seals orders, derives per-task tokens, signs principals."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._key = key.encode()
        self.output_key = _mac(self._key, b"outputs")
        self.outputs = OutputVerifier(self.output_key)

    @classmethod
    def from_env(cls) -> Sealer | None:
        key = env(SEAL_KEY_ENV) or ""
        return cls(key) if key else None

    def token(self, task_id: str) -> str:
        return _mac(self._key, b"task:" + task_id.encode())

    def _order_mac(self, order: WorkOrder) -> str:
        unsealed = msgspec.structs.replace(order, seal=None)
        return _mac(self._key, b"order:" + _encoder.encode(unsealed))

    def seal(self, order: WorkOrder) -> WorkOrder:
        """``order`` with its tokens and its seal (over everything else it says)."""
        tokened = msgspec.structs.replace(
            order,
            token=self.token(order.task_id),
            out_token=self.outputs.out_token(order.task_id),
            seal=None,
        )
        return msgspec.structs.replace(tokened, seal=self._order_mac(tokened))

    def verify(self, order: WorkOrder) -> bool:
        """Whether the dispatcher made ``order`` exactly as it is."""
        return bool(order.seal) and hmac.compare_digest(order.seal or "", self._order_mac(order))

    def principal_mac(self, principal: str, task_id: str) -> str:
        """Binds a submitter's name to one task (``Cogo-Principal-Mac``)."""
        return _mac(self._key, f"principal:{principal}\0{task_id}".encode())

    def valid_principal(self, principal: str, task_id: str, mac: str) -> bool:
        return bool(mac) and hmac.compare_digest(mac, self.principal_mac(principal, task_id))
