"""Balances: ``crm:{t}:balance:<user>`` read through from the Wrapper's credits endpoint.

The balance key has no TTL: once cached, deductions (``crmcache.credits``) and top-up events
keep it current in Redis, so the fill never overwrites an existing balance (SET NX in
``balance_fill.lua``). A miss is read through under the same lease protocol as profiles (one
upstream call per user however many callers miss; ``user-deleted`` takes the lease so a fetch
racing with it writes nothing). A 404 is cached briefly in ``crm:{t}:ref:credits:<user>``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from consumer.read.connection import ReaderConnection
from consumer.read.metrics import ReadMetrics
from consumer.read.reference import POLL_FIRST, POLL_MAX, Kept, LocalCopies, parse_number
from consumer.read.results import ReferenceResult
from crmcache.errors import StoreUnavailable, WrapperError, WrapperNotFound, WrapperUnavailable
from crmcache.keyspace import RefKind, TenantKeys

if TYPE_CHECKING:  # the Wrapper client (requests) is imported on first upstream call
    from crmcache.wrapper import WrapperClient

CREDITS = RefKind.CREDITS.value


def available_of(answer: Any) -> int | float:
    """The ``available`` number of a ``GET /api/users/{id}/credits`` answer."""
    available = answer.get("available") if isinstance(answer, dict) else None
    if isinstance(available, bool) or not isinstance(available, int | float):
        raise WrapperError("credits answer without a numeric 'available'")
    return available


class BalanceReader:
    """One tenant's balances in this process."""

    def __init__(
        self,
        tenant: str,
        settings: Settings,
        conn: ReaderConnection,
        wrapper: Callable[[], WrapperClient],
        metrics: ReadMetrics,
        local: LocalCopies,
    ) -> None:
        self.tenant = tenant
        self.keys = TenantKeys.of(tenant)
        self.conn = conn
        self.wrapper = wrapper
        self.metrics = metrics
        self.local = local
        self.lease_ms = settings.lease_ttl_ms
        self.error_ms = settings.lease_error_ttl_ms
        self.negative_ms = settings.negative_ttl * 1000

    def get(self, user_id: str) -> ReferenceResult:
        start = time.perf_counter_ns()
        k = self.keys
        keys = [
            k.balance(user_id),
            k.ref(RefKind.CREDITS, user_id),
            k.lease(RefKind.CREDITS, user_id),
        ]
        token = secrets.token_hex(12)
        script = self.conn.script("balance_read")
        deadline = time.monotonic() + self.lease_ms / 1000
        poll, fetches, waited, retried = POLL_FIRST, 0, False, False
        while True:
            try:
                reply = self.conn.run(lambda: script(keys=keys, args=[token, self.lease_ms]))
            except StoreUnavailable:
                return self._without_redis(user_id, start)
            state = reply[0]
            if state == b"fresh":
                value = parse_number(reply[1])
                self.local.put(CREDITS, user_id, Kept(value, True, time.time(), None))
                self._record(not (fetches or waited), start, fetches)
                return ReferenceResult(value, True, True, False, None, 0.0, "redis")
            if state == b"not-found":
                self._record(not (fetches or waited), start, fetches)
                expires = int(reply[2]) / 1000
                return ReferenceResult(None, False, True, False, expires, 0.0, "redis")
            if state == b"lease":
                fetches += 1
                result = self._fetch_and_fill(user_id, keys, token, start, fetches, retried)
                if result is not None:
                    return result
                retried = True  # user-deleted took our lease mid-fetch: ask once more
                continue
            if state == b"failed" or time.monotonic() > deadline:
                return self._stale_or_raise(user_id, start, fetches)
            waited = True
            time.sleep(poll)
            poll = min(poll * 2, POLL_MAX)

    def _fetch_and_fill(
        self, user_id: str, keys: list[str], token: str, start: int, fetches: int, final: bool
    ) -> ReferenceResult | None:
        """Fetch as the lease holder and fill. None when the lease was lost and nothing is
        cached (the caller asks again); when ``final``, the fetched answer, not cached."""
        try:
            text = repr(available_of(self.wrapper().user_credits(self.tenant, user_id)))
        except WrapperNotFound:
            text = ""
        except WrapperError:
            fail = self.conn.script("lease_fail")
            try:
                self.conn.run(lambda: fail(keys=[keys[2]], args=[token, self.error_ms]))
            except StoreUnavailable:
                pass
            return self._stale_or_raise(user_id, start, fetches)
        fill = self.conn.script("balance_fill")
        try:
            written, stored = self.conn.run(
                lambda: fill(keys=keys, args=[token, text, self.negative_ms])
            )
        except StoreUnavailable:
            self._record(False, start, fetches, degraded=True)
            value = parse_number(text) if text else None
            return ReferenceResult(value, bool(text), False, False, None, 0.0, "wrapper")
        if not text and written:
            self._record(False, start, fetches)
            return ReferenceResult(None, False, False, False, None, 0.0, "wrapper")
        if stored is None:
            if not final:
                return None
            self._record(False, start, fetches)
            value = parse_number(text) if text else None
            return ReferenceResult(value, bool(text), False, False, None, 0.0, "wrapper")
        value = parse_number(stored)
        self.local.put(CREDITS, user_id, Kept(value, True, time.time(), None))
        self._record(False, start, fetches)
        if written:
            return ReferenceResult(value, True, False, False, None, 0.0, "wrapper")
        return ReferenceResult(value, True, True, False, None, 0.0, "redis")

    def _stale_or_raise(self, user_id: str, start: int, fetches: int) -> ReferenceResult:
        kept = self.local.get(CREDITS, user_id)
        if kept is None:
            self._record(False, start, fetches, error=True)
            raise WrapperUnavailable(f"balance of {user_id!r}: the Wrapper failed, none cached")
        self._record(False, start, fetches, stale=True)
        age = (time.time() - kept.fetched_at) * 1000
        return ReferenceResult(kept.value, kept.found, True, True, None, age, "last-known-good")

    def _without_redis(self, user_id: str, start: int) -> ReferenceResult:
        kept = self.local.get(CREDITS, user_id)
        if kept is not None:
            self._record(True, start, 0, stale=True, degraded=True)
            age = (time.time() - kept.fetched_at) * 1000
            return ReferenceResult(kept.value, kept.found, True, True, None, age, "last-known-good")
        try:
            value = available_of(self.wrapper().user_credits(self.tenant, user_id))
        except WrapperNotFound:
            self._record(False, start, 1, degraded=True)
            return ReferenceResult(None, False, False, False, None, 0.0, "wrapper")
        except WrapperError:
            self._record(False, start, 1, degraded=True, error=True)
            raise
        self._record(False, start, 1, degraded=True)
        return ReferenceResult(value, True, False, False, None, 0.0, "wrapper")

    def _record(
        self,
        hit: bool,
        start: int,
        fetches: int,
        *,
        stale: bool = False,
        degraded: bool = False,
        error: bool = False,
    ) -> None:
        self.metrics.record(
            CREDITS,
            hit,
            time.perf_counter_ns() - start,
            stale=stale,
            degraded=degraded,
            fetches=fetches,
            error=error,
        )
