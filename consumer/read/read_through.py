"""What the two read-through readers (reference entries, balances) share: one caller's
lease-and-poll loop, the process-local last copies served while Redis is down, and how a
read-through is counted.

The protocol (memcache-style leases, in Redis so that it holds across processes): a miss takes
the key's lease with a random token and only the holder asks the Wrapper; the others poll the
entry, with backoff, for at most the lease's lifetime.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from config.settings import Settings
from consumer.read.connection import ReaderConnection
from consumer.read.metrics import ReadMetrics
from consumer.read.near_cache import drop_oldest
from consumer.read.results import ReferenceResult
from crmcache.errors import StoreUnavailable, WrapperError, WrapperNotFound, WrapperUnavailable
from crmcache.keyspace import TenantKeys

if TYPE_CHECKING:  # the Wrapper client (requests) is imported on first upstream call
    from crmcache.wrapper import WrapperClient

T = TypeVar("T")
POLL_FIRST = 0.002
POLL_MAX = 0.05


@dataclass(frozen=True, slots=True)
class Kept:
    """A process-local copy of an answer, for when Redis (or the Wrapper) fails."""

    value: Any
    found: bool
    fetched_at: float
    expires_at: float | None

    def stale_result(self, now: float) -> ReferenceResult:
        age = (now - self.fetched_at) * 1000
        return ReferenceResult(
            self.value, self.found, True, True, self.expires_at, age, "last-known-good"
        )


class LocalCopies:
    """The process's last answers per (tenant, kind, id), for when Redis fails: bounded, oldest
    first out, across every tenant. Each tenant reads and writes through ``of(tenant)``."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: dict[tuple[str, str, str], Kept] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def of(self, tenant: str) -> TenantCopies:
        return TenantCopies(self, tenant)

    def get(self, key: tuple[str, str, str]) -> Kept | None:
        return self._items.get(key)

    def put(self, key: tuple[str, str, str], kept: Kept) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            if key not in self._items:
                if len(self._items) >= self.max_entries:
                    for old in drop_oldest(self._items):
                        self._counts[old[0]] -= 1
                self._counts[key[0]] = self._counts.get(key[0], 0) + 1
            self._items[key] = kept

    def count(self, tenant: str) -> int:
        return self._counts.get(tenant, 0)

    def drop(self, tenant: str) -> None:
        """Forget a tenant's copies (the tenant was dropped from the process)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == tenant]:
                del self._items[key]
            self._counts.pop(tenant, None)

    def __len__(self) -> int:
        return len(self._items)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class TenantCopies:
    """One tenant's part of the local copies: its keys cannot reach another tenant's."""

    __slots__ = ("_copies", "tenant")

    def __init__(self, copies: LocalCopies, tenant: str) -> None:
        self._copies = copies
        self.tenant = tenant

    def get(self, kind: str, entity_id: str) -> Kept | None:
        return self._copies.get((self.tenant, kind, entity_id))

    def put(self, kind: str, entity_id: str, kept: Kept) -> None:
        self._copies.put((self.tenant, kind, entity_id), kept)

    def __len__(self) -> int:
        return self._copies.count(self.tenant)


class Lease:
    """One caller's read-through of one key: the lease token it offers, how long it waits for
    another holder's fetch, its poll backoff, and what it counts when it answers."""

    def __init__(self, lease_ms: int, metrics: ReadMetrics, data_class: str) -> None:
        self.token = secrets.token_hex(12)
        self.start = time.perf_counter_ns()
        self.deadline = time.monotonic() + lease_ms / 1000
        self.metrics = metrics
        self.data_class = data_class
        self.fetches = 0
        self.waited = False
        self.retried = False
        self._poll = POLL_FIRST
        self._again = False

    def run(self, attempt: Callable[[], T | None]) -> T:
        """Call ``attempt`` until it answers; it returns None while another caller's fetch is
        under way (then wait with backoff), or after ``again()`` (then ask at once)."""
        while True:
            answer = attempt()
            if answer is not None:
                return answer
            if self._again:
                self._again = False
                continue
            self.waited = True
            time.sleep(self._poll)
            self._poll = min(self._poll * 2, POLL_MAX)

    def again(self) -> None:
        """An invalidation took our lease mid-fetch: ask (and fetch) once more, at once."""
        self.retried = True
        self._again = True

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    @property
    def first_try(self) -> bool:
        """Answered by the first look, without fetching or waiting for a fetch: a hit."""
        return not (self.fetches or self.waited)

    def record(
        self,
        hit: bool,
        *,
        stale: bool = False,
        degraded: bool = False,
        error: bool = False,
        fetches: int | None = None,
    ) -> None:
        self.metrics.record(
            self.data_class,
            hit,
            time.perf_counter_ns() - self.start,
            stale=stale,
            degraded=degraded,
            fetches=self.fetches if fetches is None else fetches,
            error=error,
        )

    def stale_or_raise(self, stale: ReferenceResult | None, missing: str) -> ReferenceResult:
        """Stale-if-error: ``stale`` (counted), or WrapperUnavailable saying what is missing."""
        if stale is None:
            self.record(False, error=True)
            raise WrapperUnavailable(missing)
        self.record(False, stale=True)
        return stale

    def without_redis(
        self, kept: Kept | None, stale_ms: float, fetch: Callable[[], Any]
    ) -> tuple[ReferenceResult, Kept | None]:
        """Redis unreachable: the local copy (stale) while within ``stale_ms`` of its expiry,
        else the Wrapper directly (nothing can be cached). Returns the answer and, for a fetched
        one, the copy to keep."""
        now = time.time()
        if kept is not None and (
            kept.expires_at is None or (now - kept.expires_at) * 1000 <= stale_ms
        ):
            self.record(True, stale=True, degraded=True, fetches=0)
            return kept.stale_result(now), None
        fetches = self.fetches + 1
        try:
            value, found = fetch(), True
        except WrapperNotFound:
            value, found = None, False
        except WrapperError:
            self.record(False, degraded=True, error=True, fetches=fetches)
            raise
        self.record(False, degraded=True, fetches=fetches)
        result = ReferenceResult(value, found, False, False, None, 0.0, "wrapper")
        return result, Kept(value, found, now, None)


class ReadThrough:
    """What a read-through reader of one tenant holds: its keys, the read seam, the Wrapper
    (built on first use), its counters, the local copies and the lease settings."""

    def __init__(
        self,
        tenant: str,
        settings: Settings,
        conn: ReaderConnection,
        wrapper: Callable[[], WrapperClient],
        metrics: ReadMetrics,
        local: TenantCopies,
    ) -> None:
        self.tenant = tenant
        self.settings = settings
        self.keys = TenantKeys.of(tenant)
        self.conn = conn
        self.wrapper = wrapper
        self.metrics = metrics
        self.local = local
        self.lease_ms = settings.lease_ttl_ms
        self.error_ms = settings.lease_error_ttl_ms
        self.negative_ms = settings.negative_ttl * 1000
        self.stale_ms = int(settings.reference_stale_max_age * 1000)

    def lease(self, data_class: str) -> Lease:
        return Lease(self.lease_ms, self.metrics, data_class)

    def give_up_lease(self, lease_key: str, token: str) -> None:
        """After a failed fetch: others serve stale instead of refetching for a while."""
        try:
            self.conn.script("lease_fail", [lease_key], [token, self.error_ms])
        except StoreUnavailable:
            pass  # the lease expires by itself
