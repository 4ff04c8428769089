"""Child processes that do not outlive their parent.

``cogo up`` starts its nats-server in a session of its own (so a Ctrl-C reaches ``cogo up``,
which drains, and not the server first). When ``cogo up`` itself dies hard (SIGKILL, the
OOM killer) nothing would stop that server or the actors: on Linux the kernel does it,
through ``PR_SET_PDEATHSIG``, set in the child between fork and exec.

The signal fires when the *thread* that forked the child exits, not the process: start
children from a thread that lives as long as the process (the main / event-loop thread),
never from ``asyncio.to_thread``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when this process dies.

    None where the kernel offers no such thing (not Linux): the store lock and the pid file
    (``cogo.streams.store_lock``) still find and stop a server left behind.
    """
    if _libc is None:
        return None
    libc, parent = _libc, os.getpid()

    def preexec() -> None:
        # runs in the child after fork: only async-signal-safe calls, no Python locks
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec
