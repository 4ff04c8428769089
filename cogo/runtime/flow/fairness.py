"""The fair choice of the next held task of one route: limits, priorities, round-robin keys.

``RouteFlow`` is pure bookkeeping (no I/O, time passed in), so it is tested without a bus;
``cogo.runtime.flow.admission`` feeds it what the bus says (held tasks, slots taken and released)
and forwards what it picks. Rules, per route (docs/design.md §14):

- at most ``concurrency`` attempts run at once; at most ``concurrency_per_key`` of one key;
- a key starts at most ``rate_per_key_s`` attempts per second: a token bucket of ``burst``
  (one token per start). A new admitter starts every bucket *empty* and fills it from the
  moment it took over: the one before it may have spent those tokens a moment ago, so this
  keeps the rate across a takeover (at the price of a slower first ``burst`` after one);
- among tasks that may start, the highest priority first; within a priority, keys take turns
  (round-robin, one task per turn), and one key's tasks go in the order they were held;
- priorities age: a level whose oldest task has waited ``AGE_PER_LEVEL_S`` counts one level
  higher, and so on, so a steady stream of high-priority tasks delays the rest but never
  starves them (a priority-0 task that waited ``9 * AGE_PER_LEVEL_S`` outranks a fresh 9);
- a route with nothing waiting starts a task that its limits allow at once (``try_start``):
  the dispatcher that admits the route skips the hold in ``FLOW`` (the fast path), and its
  slot is recorded in the route's slot log (``cogo.runtime.flow.slotlog``), not as a KV entry.

Keys whose limit holds them are taken out of the rotation until that changes (a slot of the
key is released, its next token is due), so a pick never scans the keys that cannot start:
thousands of throttled tenants cost nothing per admission.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from cogo.config import FlowPolicy
from cogo.streams.envelope import DEFAULT_PRIORITY
from cogo.streams.flow import SLOT_GRACE_S, KeyFigures

PRIORITIES = 10
AGE_PER_LEVEL_S = 10.0  # waiting this long lifts a priority level by one (aging)
RATE_WINDOW_S = 10.0  # starts per second are counted over this window
SNAPSHOT_KEYS = 100  # the busiest keys a snapshot lists

# the limit that holds a task back (``execute_throttled``'s ``data.limit``)
ROUTE_LIMIT = "concurrency"
KEY_LIMIT = "concurrency_per_key"
RATE_LIMIT = "rate_per_key_s"


@dataclass(eq=False, slots=True)
class Held:
    """One held attempt: where it is in ``FLOW`` and what admission needs to know of it."""

    seq: int
    task_id: str
    attempt: int
    key: str
    priority: int
    deadline: float  # unix seconds
    held_at: float  # unix seconds: when it was held (its FLOW timestamp)
    slot: str  # the slot key it will hold
    data: bytes  # the WorkOrder as held
    announced: bool = False  # its execute_throttled is out (or it never waited)
    gone: bool = False  # admitted or expired
    redo: bool = False  # its slot existed when it was loaded (a takeover re-forwards it)


@dataclass(eq=False, slots=True)
class _Key:
    running: int = 0
    tokens: float = 0.0
    stamp: float = 0.0
    blocked: str | None = None  # KEY_LIMIT or RATE_LIMIT while out of the rotation
    waiting: dict[int, deque[Held]] = field(default_factory=dict)
    starts: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


class RouteFlow:
    """Held tasks, running slots and token buckets of one route; ``pick`` chooses who starts."""

    def __init__(self, limits: FlowPolicy, now: float) -> None:
        self.limits = limits
        self.born = now
        self.running = 0
        self.waiting = 0
        self._keys: dict[str, _Key] = {}
        self._slots: dict[str, tuple[str, float]] = {}  # slot key -> (flow key, expires_at)
        self._logged: set[str] = set()  # slots recorded in the slot log, not as KV entries
        self._by_seq: dict[int, Held] = {}
        # per priority, the keys with tasks waiting there and not held by their own limit, in
        # turn order (an OrderedDict as an ordered set: O(1) move-to-back and removal)
        self._ready = [OrderedDict[str, None]() for _ in range(PRIORITIES)]
        self._redo: deque[Held] = deque()  # held tasks whose slot already exists (see add)
        # per priority, its held tasks in the order they were held: the head is the oldest
        self._arrivals = [deque[Held]() for _ in range(PRIORITIES)]
        self._fresh: list[Held] = []  # held since the last pick: not announced yet
        self._rate_due: list[tuple[float, str]] = []  # (next token at, key), a heap
        self._deadlines: list[tuple[float, int]] = []  # (deadline, seq), a heap
        self._expiries: list[tuple[float, str]] = []  # (expires_at, slot key), a heap
        self._starts: deque[float] = deque(maxlen=1_000_000)

    # -- what the bus says --------------------------------------------------------------

    def add(self, held: Held) -> bool:
        """A held task (from ``FLOW``); False if it is already known."""
        if held.seq in self._by_seq:
            return False
        self._by_seq[held.seq] = held
        self.waiting += 1
        if held.slot in self._slots:
            # its slot was taken by the admitter before us, which may have forwarded it
            # too: admit it again at once (the forward is de-duplicated), it is counted already
            held.announced = held.redo = True
            self._redo.append(held)
            return True
        state = self._key(held.key)
        priority = held.priority if 0 <= held.priority < PRIORITIES else DEFAULT_PRIORITY
        state.waiting.setdefault(priority, deque()).append(held)
        self._arrivals[priority].append(held)
        if state.blocked is None:
            self._ready[priority].setdefault(held.key, None)
        heapq.heappush(self._deadlines, (held.deadline, held.seq))
        self._fresh.append(held)
        return True

    def slot_taken(self, slot: str, key: str, expires_at: float, *, logged: bool = False) -> None:
        """A slot exists (ours, or found when taking over the route); ``logged``: it is
        recorded in the route's slot log, not as a KV entry of its own."""
        if slot in self._slots:
            return
        self._slots[slot] = (key, expires_at)
        if logged:
            self._logged.add(slot)
        heapq.heappush(self._expiries, (expires_at, slot))
        self._key(key).running += 1
        self.running += 1

    def slot_released(self, slot: str) -> None:
        """A slot was released (its attempt's result was handled) or expired."""
        entry = self._slots.pop(slot, None)
        if entry is None:
            return
        self._logged.discard(slot)
        key = entry[0]
        self.running -= 1
        state = self._keys.get(key)
        if state is None:
            return
        state.running -= 1
        if state.blocked == KEY_LIMIT:
            self._unblock(key, state)

    def set_limits(self, limits: FlowPolicy) -> None:
        """New limits (``cogo policy set``): every key gets a fresh look at the next pick."""
        if limits == self.limits:
            return
        self.limits = limits
        for key, state in self._keys.items():
            if state.blocked is not None:
                self._unblock(key, state)

    def __contains__(self, seq: int) -> bool:
        return seq in self._by_seq

    def has_slot(self, slot: str) -> bool:
        return slot in self._slots

    def log_slot(self, slot: str) -> None:
        """A counted slot is recorded in the slot log (a round's pick), not as a KV entry."""
        if slot in self._slots:
            self._logged.add(slot)

    def logged_expiry(self, slot: str) -> float | None:
        """When ``slot`` expires, if it is counted and recorded in the slot log."""
        return self._slots[slot][1] if slot in self._logged else None

    def logged_slots(self) -> list[tuple[str, str, float]]:
        """(slot, flow key, expires_at) of every slot recorded in the slot log."""
        slots = self._slots
        return [(slot, *slots[slot]) for slot in self._logged]

    def try_start(self, slot: str, key: str, expires_at: float, now: float) -> bool:
        """Start an attempt that was never held, if nothing waits and the limits allow it
        now (counted as running from here, its slot a logged one); False: it must wait its
        turn in ``FLOW``. An attempt whose slot is counted already (a redelivered submission)
        may go again."""
        if slot in self._slots:
            return True
        if self.waiting or self._redo:
            return False  # others were first: no overtaking
        limits = self.limits
        if limits.concurrency is not None and self.running >= limits.concurrency:
            return False
        state = self._keys.get(key)
        if state is None:
            state = self._key(key)
        elif state.blocked is not None:
            return False
        if self._key_limit(state, now) is not None:
            return False
        if limits.rate_per_key_s is not None:
            state.tokens -= 1.0
        state.starts.append(now)
        self._starts.append(now)
        self.slot_taken(slot, key, expires_at, logged=True)
        return True

    # -- choosing -----------------------------------------------------------------------

    def pick(self, now: float, most: int) -> list[Held]:
        """Up to ``most`` held tasks that may start now, each counted as running from here."""
        self._expire_slots(now)
        self._tokens_due(now)
        self._compact()
        out: list[Held] = []
        while self._redo and len(out) < most:
            held = self._redo.popleft()
            if not held.gone:
                self._done(held)
                out.append(held)
        route_limit = self.limits.concurrency
        while len(out) < most and (route_limit is None or self.running < route_limit):
            picked = self._next(now)
            if picked is None:
                break
            out.append(picked)
        return out

    def holds(self, now: float) -> list[tuple[Held, str]]:
        """Tasks held since the last call that a limit keeps waiting, with that limit (each
        reported once: its ``execute_throttled``)."""
        out, keep = [], []
        for held in self._fresh:
            if held.gone or held.announced:
                continue
            limit = self.reason(held, now)
            if limit is None:
                keep.append(held)  # not held by a limit, only behind this pick: look again
                continue
            held.announced = True
            out.append((held, limit))
        self._fresh = keep
        return out

    def reason(self, held: Held, now: float) -> str | None:
        """The limit that keeps ``held`` waiting now (None: nothing does)."""
        state = self._keys.get(held.key)
        if state is not None:
            limit = state.blocked or self._key_limit(state, now)
            if limit is not None:
                return limit
        if self.limits.concurrency is not None and self.running >= self.limits.concurrency:
            return ROUTE_LIMIT
        return None

    def expired(self, now: float) -> list[Held]:
        """Held tasks past their deadline, taken out: their admitter fails them."""
        out = []
        while self._deadlines and self._deadlines[0][0] < now:
            _, seq = heapq.heappop(self._deadlines)
            held = self._by_seq.get(seq)
            if held is not None and not held.gone:
                self._done(held)
                out.append(held)
        return out

    def forget(self, seq: int) -> None:
        """The held task's ``FLOW`` message is gone (admitted and deleted)."""
        self._by_seq.pop(seq, None)

    def next_wake(self) -> float | None:
        """When something changes by itself: a token is due, a deadline or a slot expires."""
        times = [h[0][0] for h in (self._rate_due, self._deadlines, self._expiries) if h]
        return min(times) if times else None

    # -- inside -------------------------------------------------------------------------

    def _key(self, key: str) -> _Key:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key(stamp=self.born)  # empty bucket: see the docstring
        return state

    def _next(self, now: float) -> Held | None:
        aged = self._aged_level(now)
        if aged is not None:
            held = self._next_at(aged, now)
            if held is not None:
                return held
        for priority in range(PRIORITIES - 1, -1, -1):
            held = self._next_at(priority, now)
            if held is not None:
                return held
        return None

    def _aged_level(self, now: float) -> int | None:
        """A level below the highest ready one whose oldest task has aged past it, if any:
        each level's rank is its priority plus its oldest task's wait in levels."""
        top = best = None
        best_rank = -1.0
        for priority in range(PRIORITIES - 1, -1, -1):
            arrivals = self._arrivals[priority]
            while arrivals and arrivals[0].gone:
                arrivals.popleft()
            if not arrivals or not self._ready[priority]:
                continue
            if top is None:
                top = priority
            rank = priority + (now - arrivals[0].held_at) / AGE_PER_LEVEL_S
            if rank > best_rank:
                best, best_rank = priority, rank
        return best if best != top else None

    def _next_at(self, priority: int, now: float) -> Held | None:
        """The next task of ``priority`` whose key may start, keys in turn (None: none)."""
        ring = self._ready[priority]
        while ring:
            key = next(iter(ring))
            state = self._keys.get(key)
            if state is None:  # forgotten while idle (figures)
                del ring[key]
                continue
            queue = state.waiting.get(priority)
            while queue and queue[0].gone:
                queue.popleft()
            if not queue:
                state.waiting.pop(priority, None)
                del ring[key]
                continue
            limit = self._key_limit(state, now)
            if limit is not None:
                self._block(key, state, limit, now)
                continue
            held = queue.popleft()
            if queue:
                ring.move_to_end(key)  # its turn is over: to the back of the round
            else:
                state.waiting.pop(priority, None)
                del ring[key]
            self._start(state, held, now)
            return held
        return None

    def _key_limit(self, state: _Key, now: float) -> str | None:
        limits = self.limits
        if limits.concurrency_per_key is not None and state.running >= limits.concurrency_per_key:
            return KEY_LIMIT
        if limits.rate_per_key_s is not None and self._tokens(state, now) < 1.0:
            return RATE_LIMIT
        return None

    def _tokens(self, state: _Key, now: float) -> float:
        rate = self.limits.rate_per_key_s or 0.0
        state.tokens = min(float(self.limits.bucket), state.tokens + (now - state.stamp) * rate)
        state.stamp = now
        return state.tokens

    def _start(self, state: _Key, held: Held, now: float) -> None:
        if self.limits.rate_per_key_s is not None:
            state.tokens -= 1.0
        state.starts.append(now)
        self._starts.append(now)
        self._done(held)
        self.slot_taken(held.slot, held.key, held.deadline + SLOT_GRACE_S)

    def _done(self, held: Held) -> None:
        held.gone = True
        self.waiting -= 1

    def _block(self, key: str, state: _Key, limit: str, now: float) -> None:
        state.blocked = limit
        for priority in state.waiting:
            self._ready[priority].pop(key, None)
        if limit == RATE_LIMIT:
            rate = self.limits.rate_per_key_s or 1.0
            heapq.heappush(self._rate_due, (now + (1.0 - state.tokens) / rate, key))

    def _unblock(self, key: str, state: _Key) -> None:
        state.blocked = None
        for priority, queue in state.waiting.items():
            if queue:
                self._ready[priority].setdefault(key, None)

    def _tokens_due(self, now: float) -> None:
        while self._rate_due and self._rate_due[0][0] <= now:
            _, key = heapq.heappop(self._rate_due)
            state = self._keys.get(key)
            if state is not None and state.blocked == RATE_LIMIT:
                self._unblock(key, state)

    def _compact(self) -> None:
        # the heaps drop entries lazily (admitted tasks, released slots stay until their
        # time comes): rebuild them once most of what they hold is dead, so a busy route's
        # memory follows what waits and runs, not what passed through in the last TTL
        if len(self._deadlines) > 2 * self.waiting + 1024:
            self._deadlines = [(h.deadline, h.seq) for h in self._by_seq.values() if not h.gone and not h.redo]
            heapq.heapify(self._deadlines)
        for priority, arrivals in enumerate(self._arrivals):
            if len(arrivals) > 2 * self.waiting + 1024:
                self._arrivals[priority] = deque(h for h in arrivals if not h.gone)
        if len(self._expiries) > 2 * len(self._slots) + 1024:
            self._expiries = [(expires, slot) for slot, (_, expires) in self._slots.items()]
            heapq.heapify(self._expiries)

    def _expire_slots(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            _, slot = heapq.heappop(self._expiries)
            entry = self._slots.get(slot)
            if entry is not None and entry[1] < now:
                self.slot_released(slot)

    # -- what it looks like -------------------------------------------------------------

    def figures(self, now: float) -> tuple[float, list[KeyFigures], int]:
        """Starts per second of the route, the busiest keys' figures, how many keys more.

        Keys with nothing running, nothing waiting and a full bucket are forgotten here."""
        horizon = now - RATE_WINDOW_S
        rows = []
        for key, state in list(self._keys.items()):
            while state.starts and state.starts[0] < horizon:
                state.starts.popleft()
            waiting = {p: sum(not h.gone for h in q) for p, q in state.waiting.items()}
            waiting = {p: n for p, n in waiting.items() if n}
            tokens = self._tokens(state, now) if self.limits.rate_per_key_s is not None else None
            idle = not state.running and not waiting and not state.starts
            if idle and (tokens is None or tokens >= self.limits.bucket):
                for priority in state.waiting:  # only tasks that expired were left there
                    self._ready[priority].pop(key, None)
                del self._keys[key]
                continue
            held_by = state.blocked
            if held_by is None and waiting and self.limits.concurrency is not None:
                held_by = ROUTE_LIMIT if self.running >= self.limits.concurrency else None
            rows.append(
                KeyFigures(
                    key=key,
                    running=state.running,
                    waiting=sum(waiting.values()),
                    waiting_by_priority={str(p): n for p, n in sorted(waiting.items())},
                    rate_per_s=round(len(state.starts) / RATE_WINDOW_S, 3),
                    tokens=None if tokens is None else round(tokens, 3),
                    held_by=held_by if waiting else None,
                )
            )
        while self._starts and self._starts[0] < horizon:
            self._starts.popleft()
        rows.sort(key=lambda r: (-(r.running + r.waiting), r.key))
        rate = round(len(self._starts) / RATE_WINDOW_S, 3)
        return rate, rows[:SNAPSHOT_KEYS], max(0, len(rows) - SNAPSHOT_KEYS)

    def limits_dict(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "concurrency": limits.concurrency,
            "concurrency_per_key": limits.concurrency_per_key,
            "rate_per_key_s": limits.rate_per_key_s,
            "burst": limits.bucket if limits.rate_per_key_s is not None else None,
        }
