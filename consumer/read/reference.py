"""Reference reads: read-through from the Wrapper with TTLs and memcache-style leases.

* **One upstream fetch per key**: a miss takes the key's lease (SET NX PX with a random token,
  inside ``ref_read.lua``); only the holder fetches. Others poll the entry (bounded by the lease
  TTL) instead of fetching. This holds across threads and processes: the lease is in Redis.
* **No stale write after an invalidation**: the write side deletes the entry *and* its lease;
  the holder's fill (``ref_fill.lua``) writes only while the lease still holds its token. A fetch
  that lost its lease is retried once (so the caller gets a value fetched after the change).
* **Stale-if-error**: an entry is kept in Redis ``CRM_REFERENCE_MAX_STALE`` past its expiry; when
  the Wrapper fails (or its breaker is open) that value is served with ``stale=True``. A failed
  fetch marks the lease for ``CRM_LEASE_ERROR_TTL_MS`` so that an outage costs one upstream call
  per key and interval, not one per caller.
* **Negative caching**: a 404 is cached ``CRM_NEGATIVE_TTL`` seconds (``found=False``).
* **Redis down**: the process-local last-known-good copy is served (stale), else the Wrapper is
  asked directly (nothing can be cached).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from consumer.read.connection import ReaderConnection
from consumer.read.metrics import ReadMetrics
from consumer.read.results import ReferenceResult
from crmcache.errors import StoreUnavailable, WrapperError, WrapperNotFound, WrapperUnavailable
from crmcache.keyspace import RefKind, TenantKeys

if TYPE_CHECKING:  # the Wrapper client (requests) is imported on first upstream call
    from crmcache.wrapper import WrapperClient

POLL_FIRST = 0.002
POLL_MAX = 0.05


@dataclass(frozen=True, slots=True)
class Kept:
    """A process-local copy of an answer, for when Redis is unreachable."""

    value: Any
    found: bool
    fetched_at: float
    expires_at: float | None


class LocalCopies:
    """Bounded (oldest first out) map of last answers per (kind, id)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: dict[tuple[str, str], Kept] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, entity_id: str) -> Kept | None:
        return self._items.get((kind, entity_id))

    def put(self, kind: str, entity_id: str, kept: Kept) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            key = (kind, entity_id)
            if len(self._items) >= self.max_entries and key not in self._items:
                for old in list(self._items)[: max(len(self._items) // 10, 1)]:
                    self._items.pop(old, None)
            self._items[key] = kept

    def __len__(self) -> int:
        return len(self._items)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


def parse_number(text: bytes | str) -> int | float:
    """A stored decimal ("150", "147.5") as an int when integral, else a float."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class ReferenceReader:
    """One tenant's read-through reference data in this process."""

    def __init__(
        self,
        tenant: str,
        settings: Settings,
        conn: ReaderConnection,
        wrapper: Callable[[], WrapperClient],
        metrics: ReadMetrics,
    ) -> None:
        self.tenant = tenant
        self.keys = TenantKeys.of(tenant)
        self.conn = conn
        self.wrapper = wrapper
        self.metrics = metrics
        self.local = LocalCopies(settings.reference_local_max_entries)
        self.ttl_ms = {
            RefKind.PROFILE: settings.profile_ttl * 1000,
            RefKind.HIERARCHY: settings.hierarchy_ttl * 1000,
        }
        self.stale_ms = int(settings.reference_stale_max_age * 1000)
        self.negative_ms = settings.negative_ttl * 1000
        self.lease_ms = settings.lease_ttl_ms
        self.error_ms = settings.lease_error_ttl_ms

    def _fetcher(self, kind: RefKind) -> Callable[[str, str], Any]:
        wrapper = self.wrapper()
        if kind is RefKind.PROFILE:
            return wrapper.user_profile
        if kind is RefKind.HIERARCHY:
            return wrapper.hierarchy
        return wrapper.user_credits

    # --- profiles and hierarchy ------------------------------------------------------------------

    def get(self, kind: RefKind, entity_id: str) -> ReferenceResult:
        start = time.perf_counter_ns()
        keys = [self.keys.ref(kind, entity_id), self.keys.lease(kind, entity_id)]
        token = secrets.token_hex(12)
        script = self.conn.script("ref_read")
        deadline = time.monotonic() + self.lease_ms / 1000
        poll, fetches, waited, retried = POLL_FIRST, 0, False, False
        while True:
            try:
                reply = self.conn.run(lambda: script(keys=keys, args=[token, self.lease_ms]))
            except StoreUnavailable:
                return self._without_redis(kind, entity_id, start, fetches)
            now_ms, state, value, fetched_ms, expires_ms, not_found = reply
            entry = _Entry(value, fetched_ms, expires_ms, not_found)
            if state == b"fresh":
                result = entry.result(int(now_ms), stale=False)
                self._keep(kind, entity_id, result, entry)
                self._record(kind, not (fetches or waited), start, fetches)
                return result
            if state == b"lease":
                fetches += 1
                try:
                    written, result = self._fetch_and_fill(
                        kind, entity_id, keys, token, entry, int(now_ms)
                    )
                except WrapperError:
                    self._record(kind, False, start, fetches, error=True)
                    raise
                if written or retried:
                    self._record(kind, False, start, fetches, stale=result.stale)
                    return result
                retried = True  # an invalidation took our lease mid-fetch: fetch once more
                continue
            if state == b"failed" or time.monotonic() > deadline:
                return self._stale_or_raise(kind, entity_id, entry, int(now_ms), start, fetches)
            waited = True
            time.sleep(poll)
            poll = min(poll * 2, POLL_MAX)

    def _fetch_and_fill(
        self,
        kind: RefKind,
        entity_id: str,
        keys: list[str],
        token: str,
        entry: _Entry,
        now_ms: int,
    ) -> tuple[bool, ReferenceResult]:
        """Fetch as the lease holder and fill the entry. Returns (whether the entry was
        written, the answer); not written: an invalidation took the lease during the fetch,
        or Redis failed meanwhile (the answer is then the fetched value, not cached)."""
        try:
            value, found = self._fetcher(kind)(self.tenant, entity_id), True
        except WrapperNotFound:
            value, found = None, False
        except WrapperError:
            self._give_up_lease(keys[1], token)
            stale = self._stale_result(kind, entity_id, entry, now_ms)
            if stale is None:
                raise
            return True, stale
        fresh_ms = self.ttl_ms[kind] if found else self.negative_ms
        keep_ms = fresh_ms + self.stale_ms if found else fresh_ms
        text = json.dumps(value, separators=(",", ":"))
        fill = self.conn.script("ref_fill")
        args = [token, text, "0" if found else "1", fresh_ms, keep_ms]
        fetched_at = time.time()
        uncached = ReferenceResult(value, found, False, False, None, 0.0, "wrapper")
        try:
            written = self.conn.run(lambda: fill(keys=keys, args=args))
        except StoreUnavailable:
            self.local.put(kind, entity_id, Kept(value, found, fetched_at, None))
            return True, uncached
        if not written[0]:
            return False, uncached
        expires_at = int(written[2]) / 1000
        self.local.put(kind, entity_id, Kept(value, found, fetched_at, expires_at))
        return True, ReferenceResult(value, found, False, False, expires_at, 0.0, "wrapper")

    def _give_up_lease(self, lease_key: str, token: str) -> None:
        fail = self.conn.script("lease_fail")
        try:
            self.conn.run(lambda: fail(keys=[lease_key], args=[token, self.error_ms]))
        except StoreUnavailable:
            pass  # the lease expires by itself

    def _stale_result(
        self, kind: RefKind, entity_id: str, entry: _Entry, now_ms: int
    ) -> ReferenceResult | None:
        """Stale-if-error: the Redis entry, else the local copy, if within the stale window."""
        if entry.expires_ms is not None and now_ms - entry.expires_ms <= self.stale_ms:
            return entry.result(now_ms, stale=True)
        kept = self.local.get(kind, entity_id)
        if kept is not None and kept.expires_at is not None:
            now = time.time()
            if (now - kept.expires_at) * 1000 <= self.stale_ms:
                age = (now - kept.fetched_at) * 1000
                return ReferenceResult(
                    kept.value, kept.found, True, True, kept.expires_at, age, "last-known-good"
                )
        return None

    def _stale_or_raise(
        self, kind: RefKind, entity_id: str, entry: _Entry, now_ms: int, start: int, fetches: int
    ) -> ReferenceResult:
        result = self._stale_result(kind, entity_id, entry, now_ms)
        if result is None:
            self._record(kind, False, start, fetches, error=True)
            raise WrapperUnavailable(
                f"{kind.value} {entity_id!r}: the Wrapper failed or is still being asked, "
                "and there is no value to serve"
            )
        self._record(kind, False, start, fetches, stale=True)
        return result

    def _without_redis(
        self, kind: RefKind, entity_id: str, start: int, fetches: int
    ) -> ReferenceResult:
        """Redis unreachable: the local copy (stale), else the Wrapper directly (not cached)."""
        kept = self.local.get(kind, entity_id)
        now = time.time()
        if kept is not None and (
            kept.expires_at is None or (now - kept.expires_at) * 1000 <= self.stale_ms
        ):
            age = (now - kept.fetched_at) * 1000
            self.metrics.record(
                kind.value, True, time.perf_counter_ns() - start, stale=True, degraded=True
            )
            return ReferenceResult(
                kept.value, kept.found, True, True, kept.expires_at, age, "last-known-good"
            )
        try:
            value, found = self._fetcher(kind)(self.tenant, entity_id), True
        except WrapperNotFound:
            value, found = None, False
        except WrapperError:
            self._record(kind, False, start, fetches + 1, degraded=True, error=True)
            raise
        self.local.put(kind, entity_id, Kept(value, found, now, None))
        self._record(kind, False, start, fetches + 1, degraded=True)
        return ReferenceResult(value, found, False, False, None, 0.0, "wrapper")

    def _keep(self, kind: RefKind, entity_id: str, result: ReferenceResult, entry: _Entry) -> None:
        fetched = (entry.fetched_ms or 0) / 1000
        self.local.put(
            kind, entity_id, Kept(result.value, result.found, fetched, result.expires_at)
        )

    def _record(
        self,
        kind: RefKind,
        hit: bool,
        start: int,
        fetches: int,
        *,
        stale: bool = False,
        degraded: bool = False,
        error: bool = False,
    ) -> None:
        self.metrics.record(
            kind.value,
            hit,
            time.perf_counter_ns() - start,
            stale=stale,
            degraded=degraded,
            fetches=fetches,
            error=error,
        )

    # --- expiry ----------------------------------------------------------------------------------

    def expiry(self, kind: RefKind, entity_id: str) -> float | None:
        """Epoch seconds when the fresh cached entry expires; None when there is none."""
        key = self.keys.ref(kind, entity_id)
        try:
            raw = self.conn.run(lambda: self.conn.client.hget(key, "expires-ms"))
        except StoreUnavailable:
            kept = self.local.get(kind, entity_id)
            return kept.expires_at if kept is not None else None
        if raw is None or int(raw) <= time.time() * 1000:
            return None
        return int(raw) / 1000


@dataclass(frozen=True, slots=True)
class _Entry:
    """A reference entry as ref_read.lua returned it (all None when there is none)."""

    value: bytes | None
    fetched_ms: int | None
    expires_ms: int | None
    not_found: bool

    def __init__(self, value: Any, fetched: Any, expires: Any, not_found: Any) -> None:
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "fetched_ms", int(fetched) if fetched is not None else None)
        object.__setattr__(self, "expires_ms", int(expires) if expires is not None else None)
        object.__setattr__(self, "not_found", not_found == b"1")

    def result(self, now_ms: int, *, stale: bool) -> ReferenceResult:
        found = not self.not_found and self.value is not None
        value = json.loads(self.value) if found and self.value is not None else None
        age = max(now_ms - (self.fetched_ms or now_ms), 0)
        expires = self.expires_ms / 1000 if self.expires_ms is not None else None
        return ReferenceResult(value, found, True, stale, expires, float(age), "redis")
