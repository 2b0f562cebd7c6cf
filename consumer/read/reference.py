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

The lease loop and the local copies are shared with balances (consumer/read/read_through.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consumer.read.read_through import Kept, Lease, ReadThrough
from consumer.read.results import ReferenceResult
from crmcache.errors import StoreUnavailable, WrapperError, WrapperNotFound
from crmcache.keyspace import REF_EXPIRES_MS, RefKind
from crmcache.tokens import version_token

if TYPE_CHECKING:  # the Wrapper client (requests) is imported on first upstream call
    pass


class ReferenceReader(ReadThrough):
    """One tenant's read-through profiles and hierarchy nodes in this process."""

    def _fresh_ms(self, kind: RefKind) -> int:
        ttl = self.settings.profile_ttl if kind is RefKind.PROFILE else self.settings.hierarchy_ttl
        return ttl * 1000

    def _fetch(self, kind: RefKind, entity_id: str) -> Any:
        wrapper = self.wrapper()
        fetch = wrapper.user_profile if kind is RefKind.PROFILE else wrapper.hierarchy
        return fetch(self.tenant, entity_id)

    # --- profiles and hierarchy ------------------------------------------------------------------

    def get(self, kind: RefKind, entity_id: str) -> ReferenceResult:
        lease = self.lease(kind.value)
        keys = [self.keys.ref(kind, entity_id), self.keys.lease(kind, entity_id), self.keys.meta]
        return lease.run(lambda: self._attempt(kind, entity_id, keys, lease))

    def _attempt(
        self, kind: RefKind, entity_id: str, keys: list[str], lease: Lease
    ) -> ReferenceResult | None:
        """One look at the entry (ref_read.lua); None: look again (see ``Lease.run``)."""
        try:
            reply = self.conn.script("ref_read", keys, [lease.token, self.lease_ms])
        except StoreUnavailable:
            return self._without_redis(kind, entity_id, lease)
        epoch, version, now_ms, state, value, fetched_ms, expires_ms, not_found = reply
        entry = _Entry(value, fetched_ms, expires_ms, not_found, version_token(epoch, version))
        if state == b"fresh":
            result = entry.result(int(now_ms), stale=False)
            self._keep(kind, entity_id, result, entry)
            lease.record(lease.first_try)
            return result
        if state == b"lease":
            lease.fetches += 1
            try:
                written, result = self._fetch_and_fill(
                    kind, entity_id, keys, lease.token, entry, int(now_ms)
                )
            except WrapperError:
                lease.record(False, error=True)
                raise
            if written or lease.retried:
                lease.record(False, stale=result.stale)
                return result
            lease.again()
            return None
        if state == b"failed" or lease.expired:
            stale = self._stale_result(kind, entity_id, entry, int(now_ms))
            missing = (
                f"{kind.value} {entity_id!r}: the Wrapper failed or is still being asked, "
                "and there is no value to serve"
            )
            return lease.stale_or_raise(stale, missing)
        return None

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
            value, found = self._fetch(kind, entity_id), True
        except WrapperNotFound:
            value, found = None, False
        except WrapperError:
            self.give_up_lease(keys[1], token)
            stale = self._stale_result(kind, entity_id, entry, now_ms)
            if stale is None:
                raise
            return True, stale
        fresh_ms = self._fresh_ms(kind) if found else self.negative_ms
        keep_ms = fresh_ms + self.stale_ms if found else fresh_ms
        text = json.dumps(value, separators=(",", ":"))
        args = [token, text, "0" if found else "1", fresh_ms, keep_ms]
        fetched_at = time.time()
        uncached = ReferenceResult(value, found, False, False, None, 0.0, "wrapper")
        try:
            written = self.conn.script("ref_fill", keys, args)
        except StoreUnavailable:
            self.local.put(kind, entity_id, Kept(value, found, fetched_at, None))
            return True, uncached
        epoch, version, ok, *written = written
        if not ok:
            return False, uncached
        expires_at = int(written[1]) / 1000
        self.local.put(kind, entity_id, Kept(value, found, fetched_at, expires_at))
        token = version_token(epoch, version)
        return True, ReferenceResult(value, found, False, False, expires_at, 0.0, "wrapper", token)

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
                return kept.stale_result(now)
        return None

    def _without_redis(self, kind: RefKind, entity_id: str, lease: Lease) -> ReferenceResult:
        """Redis unreachable: the local copy (stale), else the Wrapper directly (not cached)."""
        result, fetched = lease.without_redis(
            self.local.get(kind, entity_id), self.stale_ms, lambda: self._fetch(kind, entity_id)
        )
        if fetched is not None:
            self.local.put(kind, entity_id, fetched)
        return result

    def _keep(self, kind: RefKind, entity_id: str, result: ReferenceResult, entry: _Entry) -> None:
        fetched = (entry.fetched_ms or 0) / 1000
        self.local.put(
            kind, entity_id, Kept(result.value, result.found, fetched, result.expires_at)
        )

    # --- expiry ----------------------------------------------------------------------------------

    def expiry(self, kind: RefKind, entity_id: str) -> float | None:
        """Epoch seconds when the fresh cached entry expires; None when there is none."""
        key = self.keys.ref(kind, entity_id)
        try:
            raw = self.conn.hash_field(key, REF_EXPIRES_MS)
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
    token: str

    def __init__(
        self, value: Any, fetched: Any, expires: Any, not_found: Any, token: str = ""
    ) -> None:
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "fetched_ms", int(fetched) if fetched is not None else None)
        object.__setattr__(self, "expires_ms", int(expires) if expires is not None else None)
        object.__setattr__(self, "not_found", not_found == b"1")

    def result(self, now_ms: int, *, stale: bool) -> ReferenceResult:
        found = not self.not_found and self.value is not None
        value = json.loads(self.value) if found and self.value is not None else None
        age = max(now_ms - (self.fetched_ms or now_ms), 0)
        expires = self.expires_ms / 1000 if self.expires_ms is not None else None
        token = self.token
        return ReferenceResult(value, found, True, stale, expires, float(age), "redis", token)
