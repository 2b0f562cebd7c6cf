"""Balances: ``crm:{t}:balance:<user>`` read through from the Wrapper's credits endpoint.

The balance key has no TTL: once cached, deductions (``crmcache.credits``) and top-up events
keep it current in Redis, so the fill never overwrites an existing balance (SET NX in
``balance_fill.lua``). A miss is read through under the same lease protocol as profiles (one
upstream call per user however many callers miss; ``user-deleted`` takes the lease so a fetch
racing with it writes nothing). A 404 is cached briefly in ``crm:{t}:ref:credits:<user>``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from consumer.read.decode import parse_number
from consumer.read.read_through import Kept, Lease, ReadThrough
from consumer.read.results import ReferenceResult, Source
from crmcache.errors import StoreUnavailable, WrapperError, WrapperNotFound
from crmcache.keyspace import RefKind
from crmcache.tokens import version_token

if TYPE_CHECKING:  # the Wrapper client (requests) is imported on first upstream call
    pass

CREDITS = RefKind.CREDITS.value


def available_of(answer: Any) -> int | float:
    """The ``available`` number of a ``GET /api/users/{id}/credits`` answer."""
    available = answer.get("available") if isinstance(answer, dict) else None
    if isinstance(available, bool) or not isinstance(available, int | float):
        raise WrapperError("credits answer without a numeric 'available'")
    return available


class BalanceReader(ReadThrough):
    """One tenant's balances in this process."""

    def _fetch(self, user_id: str) -> int | float:
        return available_of(self.wrapper().user_credits(self.tenant, user_id))

    def get(self, user_id: str) -> ReferenceResult:
        lease = self.lease(CREDITS)
        k = self.keys
        keys = [
            k.balance(user_id),
            k.ref(RefKind.CREDITS, user_id),
            k.lease(RefKind.CREDITS, user_id),
            k.meta,
        ]
        return lease.run(lambda: self._attempt(user_id, keys, lease))

    def _attempt(self, user_id: str, keys: list[str], lease: Lease) -> ReferenceResult | None:
        """One look at the balance (balance_read.lua); None: look again (``Lease.run``)."""
        try:
            reply = self.conn.script("balance_read", keys, [lease.token, self.lease_ms])
        except StoreUnavailable:
            answer, _ = lease.without_redis(
                self.local.get(CREDITS, user_id), 0.0, lambda: self._fetch(user_id)
            )
            return answer
        epoch, version, state, *reply = reply
        token = version_token(epoch, version)
        if state == b"fresh":
            value = parse_number(reply[0])
            self.local.put(CREDITS, user_id, Kept(value, True, time.time(), None))
            lease.record(lease.first_try)
            return ReferenceResult(value, True, True, False, None, 0.0, "redis", token)
        if state == b"not-found":
            lease.record(lease.first_try)
            expires = int(reply[1]) / 1000
            return ReferenceResult(None, False, True, False, expires, 0.0, "redis", token)
        if state == b"lease":
            lease.fetches += 1
            result = self._fetch_and_fill(user_id, keys, lease)
            if result is None:
                lease.again()  # user-deleted took our lease mid-fetch: ask once more
            return result
        if state == b"failed" or lease.expired:
            return self._stale_or_raise(user_id, lease)
        return None

    def _fetch_and_fill(
        self, user_id: str, keys: list[str], lease: Lease
    ) -> ReferenceResult | None:
        """Fetch as the lease holder and fill. None when the lease was lost and nothing is
        cached (the caller asks again); on the second try, the fetched answer, not cached."""
        try:
            text = repr(self._fetch(user_id))
        except WrapperNotFound:
            text = ""
        except WrapperError:
            self.give_up_lease(keys[2], lease.token)
            return self._stale_or_raise(user_id, lease)
        try:
            epoch, version, written, stored = self.conn.script(
                "balance_fill", keys, [lease.token, text, self.negative_ms]
            )
        except StoreUnavailable:
            lease.record(False, degraded=True)
            return _fetched(text)
        token = version_token(epoch, version)
        if not text and written:
            lease.record(False)
            return ReferenceResult(None, False, False, False, None, 0.0, "wrapper", token)
        if stored is None:
            if not lease.retried:
                return None
            lease.record(False)
            return _fetched(text)
        value = parse_number(stored)
        self.local.put(CREDITS, user_id, Kept(value, True, time.time(), None))
        lease.record(False)
        source: Source = "wrapper" if written else "redis"
        return ReferenceResult(value, True, not written, False, None, 0.0, source, token)

    def _stale_or_raise(self, user_id: str, lease: Lease) -> ReferenceResult:
        kept = self.local.get(CREDITS, user_id)
        stale = kept.stale_result(time.time()) if kept is not None else None
        missing = f"balance of {user_id!r}: the Wrapper failed, none cached"
        return lease.stale_or_raise(stale, missing)


def _fetched(text: str) -> ReferenceResult:
    """A balance just fetched and not cached ("" for the Wrapper's 404)."""
    value = parse_number(text) if text else None
    return ReferenceResult(value, bool(text), False, False, None, 0.0, "wrapper")
