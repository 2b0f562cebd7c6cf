"""The near-cache: one tenant's critical data held in this process, and how far to trust it.

Coherence is by version, not by entry. Every change the workers apply bumps ``meta.version``
and is announced on ``crm:<t>:changes``; every Redis read of critical data returns the version
it was read at. The cache keeps a *generation*: a new version starts a new generation, which
invalidates every entry at once (O(1)) without deleting it. Entries of older generations stay
as the last-known-good copy that degraded mode answers from when Redis is unreachable.

Users' and roles' entries are current from a floor generation on (``access_floor``), cost
entries only in the current one: a change that wrote credit costs (or configs) but no access
field (``access`` 0 in its notification) starts a generation without raising the floor, so
users and roles stay warm while a flood of cost changes goes by.

Staleness bound: an entry is trusted only while the version was confirmed (by a notification,
a background check or any read) less than ``staleness_ms`` ago. A reader that missed
notifications (pub/sub disconnect, fork) is distrusted until it confirms again.

Balances change far more often than costs or access (every charge), so they are held by
*version*, not by generation: a balance read at version V answers only while the cache's
version is still V. Every charge and every top-up bumps the version (announced with
``written`` 0, which keeps the critical entries warm), so any balance change anywhere drops
every balance this process holds, and nothing else.
"""

from __future__ import annotations

import threading
from typing import Any, TypeAlias, TypeVar

from consumer.read.budget import EntryBudget
from crmcache.tokens import version_token

Entry: TypeAlias = tuple[Any, int, float, str]
"""(value, generation, monotonic time it was read from Redis, token of the data it was read
with)."""
Balance: TypeAlias = tuple[int | float, int, bytes]
"""(available credits, meta version and epoch it was read at)."""

EVICT_FRACTION = 10
K = TypeVar("K")


def drop_oldest(table: dict[K, Any]) -> list[K]:
    """Drop the oldest tenth (at least one) of ``table`` and return the keys dropped (dicts keep
    insertion order). The one eviction rule of the read side's process-local copies; safe with
    concurrent reads and puts of the table (each pop is atomic)."""
    dropped = []
    for old in list(table)[: max(len(table) // EVICT_FRACTION, 1)]:
        if table.pop(old, None) is not None:
            dropped.append(old)
    return dropped


class NearCache:
    """Per-tenant, per-process copy of credit costs, users' access and roles' grants.

    Reads of the tables and of ``gen`` / ``trusted_until`` are lock-free (one dict lookup and two
    comparisons on the hot path); changes to coherence state take ``lock``.
    """

    __slots__ = (
        "bound",
        "budget",
        "costs",
        "users",
        "roles",
        "balances",
        "lock",
        "gen",
        "access_floor",
        "version",
        "epoch",
        "ready",
        "confirmed_at",
        "trusted_until",
        "token",
        "changed",
    )

    def __init__(
        self, staleness_ms: int, max_entries: int = 0, budget: EntryBudget | None = None
    ) -> None:
        """``budget``: the process's entry budget shared by every tenant; without one, a
        budget of ``max_entries`` of its own."""
        self.bound = staleness_ms / 1000.0
        self.budget = budget if budget is not None else EntryBudget(max_entries)
        self.costs: dict[str, Entry] = {}
        """operationCode -> (cost or None for "not configured", gen, read_at)"""
        self.users: dict[str, Entry] = {}
        """userId -> ((status or None, role ids or None), gen, read_at)"""
        self.roles: dict[str, Entry] = {}
        """roleId -> (Grants or None for "no such role", gen, read_at)"""
        self.balances: dict[str, Balance] = {}
        """userId -> (available, version, epoch): current only while ``version`` is"""
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        """Notified on every change notification (what an at_least_as_fresh read waits on)."""
        self.gen = 0
        self.access_floor = 0
        """User and role entries of a generation below it are not current."""
        self.version: int | None = None
        self.epoch: bytes | None = None
        self.ready = False
        self.confirmed_at = 0.0
        self.trusted_until = 0.0
        self.token = ""
        """The token of (epoch, version): what an entry of the current generation is at.
        Read it before ``gen``: a change between the two reads fails the generation check."""
        self.budget.register(self)

    # --- coherence ---------------------------------------------------------------------------

    def observe(
        self, epoch: bytes | None, version: int, started: float, ready: bool | None = None
    ) -> int | None:
        """Record (``epoch``, ``version``), read from Redis by a call that started at
        ``started``, and confirm the cache up to then.

        Returns the generation under which values read by that call may be cached, or None when
        they are older than what the cache already knows (a slower concurrent read). A new epoch
        (Redis lost its data: versions restarted) or a higher version starts a generation.
        """
        with self.lock:
            if epoch != self.epoch and self.epoch is not None and started < self.confirmed_at:
                return None  # a slower read from before the epoch we already confirmed
            if epoch != self.epoch or self.version is None or version > self.version:
                self.epoch = epoch
                self.version = version
                self.token = version_token(epoch, version)
                self._new_generation(access=True)
            elif version < self.version:
                return None
            if ready is not None:
                self.ready = ready
            if started > self.confirmed_at:
                self.confirmed_at = started
                self.trusted_until = started + self.bound
            return self.gen

    def notify(self, version: int, written: int | None = None, access: int | None = None) -> None:
        """A change notification: a higher version starts a generation, unless it is the very
        next version and the workers say it wrote no critical field (``written`` 0: only
        reference entries or balances changed), which keeps the near-cache warm; the very next
        version with no access field written (``access`` 0) keeps users and roles warm. It never
        confirms (a notification does not name the epoch; only reads and checks confirm)."""
        with self.lock:
            if self.version is None:
                self.changed.notify_all()
                return
            if version <= self.version:
                return
            following = version == self.version + 1
            if not (written == 0 and following):
                self._new_generation(access=not (access == 0 and following))
            self.version = version
            self.token = version_token(self.epoch, version)
            self.changed.notify_all()

    def _new_generation(self, access: bool) -> None:
        """Invalidate the cost entries, and with ``access`` the users' and roles' (lock held)."""
        self.gen += 1
        if access:
            self.access_floor = self.gen

    def wait_for_change(self, timeout: float) -> None:
        """Sleep until the next change notification, at most ``timeout`` seconds."""
        with self.lock:
            self.changed.wait(timeout)

    def distrust(self) -> None:
        """Notifications may have been missed: confirm the version before the next cached answer."""
        with self.lock:
            self.trusted_until = 0.0

    def forget_version(self) -> None:
        """After Redis was unreachable: whatever it reports next starts a generation."""
        with self.lock:
            self.version = None
            self.epoch = None
            self.token = ""
            self.trusted_until = 0.0

    def needs_check(self, now: float) -> bool:
        """Is a background version check due (half the staleness bound since confirmation)?"""
        return now >= self.trusted_until - self.bound / 2

    # --- entries -----------------------------------------------------------------------------

    def put(
        self, table: dict[str, Entry], key: str, value: Any, gen: int, read_at: float, token: str
    ) -> None:
        if key not in table:
            self.budget.admit(self)
        table[key] = (value, gen, read_at, token)

    def evict_oldest(self) -> int:
        """Drop the oldest tenth (at least one) of the largest table; returns how many. Called
        by the budget, from whichever tenant's read needs room."""
        tables: tuple[dict[str, Any], ...] = (self.costs, self.users, self.roles, self.balances)
        return len(drop_oldest(max(tables, key=len)))

    def balance(self, user_id: str, now: float) -> int | float | None:
        """The user's balance when it was read at the current version and epoch, and the
        version is trusted; else None (lock-free)."""
        entry = self.balances.get(user_id)
        if (
            entry is None
            or entry[1] != self.version
            or entry[2] != self.epoch
            or now >= self.trusted_until
        ):
            return None
        return entry[0]

    def keep_balance(self, user_id: str, value: int | float, version: int, epoch: bytes) -> bool:
        """Keep a balance read from Redis together with (``version``, ``epoch``), atomically;
        only when that is the version this cache knows (a read ahead of the notifications, or
        behind them, is answered but not kept)."""
        with self.lock:
            if version != self.version or epoch != self.epoch:
                return False
            if user_id not in self.balances:
                self.budget.admit(self)
            self.balances[user_id] = (value, version, epoch)
            return True

    def age_ms(self, entry: Entry, now: float) -> float:
        """How long ago the entry was last known to be current."""
        known_at = entry[2]
        if entry[1] == self.gen and self.confirmed_at > known_at:
            known_at = self.confirmed_at
        return max(now - known_at, 0.0) * 1000.0

    @property
    def size(self) -> int:
        return len(self.costs) + len(self.users) + len(self.roles) + len(self.balances)

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held) and no trust."""
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.trusted_until = 0.0
