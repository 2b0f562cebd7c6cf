"""Batches the subscriber sent and has not yet seen applied: its second line of defence.

A batch can be held without being lost: a worker host or a pool process that hangs while it
holds the message keeps it unacknowledged, and the Redis transport redelivers it only after
its visibility timeout (an hour). apply_events.lua records every batch it runs by the batch's
highest receipt stamp (``crm:{t}:applied-batches``, 30 s); once a second the subscriber asks
which of its batches are recorded (one pipelined ZMSCORE per tenant) and forgets those.

A batch is sent again when it has been unapplied for ``CRM_INFLIGHT_TIMEOUT`` seconds and was
the oldest unapplied batch of its queue at two looks in a row: a draining backlog's oldest
batch changes between two looks, so a slow queue is not flooded with copies, and at most one
batch per queue is re-sent a second. Applying a batch twice changes nothing (stamps, eventId
dedupe, stamp-based ids of credit deltas). After ``CRM_INFLIGHT_MAX_RESENDS`` re-sends the
subscriber gives up on the batch and resyncs its tenant (at most once per
``RESYNC_INTERVAL``). Every (re)subscribe starts with a resync of every tenant, which
supersedes what was in flight, so the subscriber then starts afresh (``clear``).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from kombu.exceptions import OperationalError as KombuOperationalError

from consumer.ingest.pubsub_shards import ConnectionLost
from crmcache.store import Store

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
RESYNC_INTERVAL = 30.0
"""Seconds between two resyncs of one tenant for batches the subscriber gave up on."""
MAX_TRACKED = 20_000
"""Batches tracked at most (a long backlog): beyond it the oldest are forgotten, not re-sent."""


class BatchSender(Protocol):
    def apply_events(
        self, tenant: str, events: list[dict[str, Any]], bulk: bool = False
    ) -> None: ...

    def preload(self, tenant: str | None, reason: str) -> None: ...


@dataclass
class Batch:
    tenant: str
    bodies: list[dict[str, Any]]
    bulk: bool
    sent_at: float
    resends: int = 0


def highest_stamp(bodies: list[dict[str, Any]]) -> int:
    """The batch's identity in apply_events.lua's record: its highest receipt stamp (a batch's
    fresh stamps are its own; a re-published eventId keeps an older one)."""
    return max(int(body["s"]) for body in bodies)


class InFlight:
    """The subscriber's sent batches, checked once a second, re-sent when held too long."""

    def __init__(
        self,
        store: Store,
        sender: BatchSender,
        stats: Counter[str],
        timeout: float,
        max_resends: int,
    ) -> None:
        self.store = store
        self.sender = sender
        self.stats = stats
        self.timeout = timeout
        self.max_resends = max_resends
        self._batches: OrderedDict[tuple[str, int], Batch] = OrderedDict()
        self._front: dict[bool, tuple[tuple[str, int], float]] = {}
        self._resynced: dict[str, float] = {}
        self._next_check = 0.0

    def __len__(self) -> int:
        return len(self._batches)

    def sent(self, tenant: str, bodies: list[dict[str, Any]], bulk: bool, now: float) -> None:
        if self.timeout <= 0 or not bodies:
            return
        key = (tenant, highest_stamp(bodies))
        self._batches[key] = Batch(tenant, bodies, bulk, now)
        self._batches.move_to_end(key)
        while len(self._batches) > MAX_TRACKED:
            self._batches.popitem(last=False)
            self.stats["inflight_untracked"] += 1

    def clear(self) -> None:
        self._batches.clear()
        self._front.clear()

    def check(self, now: float) -> None:
        """At most once per CHECK_INTERVAL: forget applied batches, re-send held ones.
        Raises StoreUnavailable, or ConnectionLost when the broker refuses a re-send, as the
        subscriber's other calls do (it reconnects and resyncs)."""
        if now < self._next_check or not self._batches:
            return
        self._next_check = now + CHECK_INTERVAL
        self._forget_applied()
        for bulk in (False, True):
            front = self._front_of(bulk, now)
            if front is not None:
                self._maybe_resend(front, now)

    def _forget_applied(self) -> None:
        wanted: dict[str, list[int]] = {}
        for tenant, top in self._batches:
            wanted.setdefault(tenant, []).append(top)
        for tenant, tops in self.store.applied_batches(wanted).items():
            for top in tops:
                del self._batches[(tenant, top)]

    def _front_of(self, bulk: bool, now: float) -> tuple[str, int] | None:
        """The queue's oldest unapplied batch if it was already the oldest at the last look."""
        key = next((k for k, b in self._batches.items() if b.bulk == bulk), None)
        if key is None:
            self._front.pop(bulk, None)
            return None
        previous, since = self._front.get(bulk, (None, now))
        if previous != key:
            self._front[bulk] = (key, now)
            return None
        return key if now - since >= CHECK_INTERVAL else None

    def _maybe_resend(self, key: tuple[str, int], now: float) -> None:
        batch = self._batches[key]
        if now - batch.sent_at < self.timeout:
            return
        if batch.resends >= self.max_resends:
            self._give_up(key, now)
            return
        try:
            self.sender.apply_events(batch.tenant, batch.bodies, bulk=batch.bulk)
        except (KombuOperationalError, OSError) as exc:
            raise ConnectionLost(f"re-send failed: {exc}") from None  # as a failed flush
        batch.resends += 1
        batch.sent_at = now
        self._batches.move_to_end(key)
        self.stats["inflight_resent"] += 1
        logger.warning(
            "tenant=%s batch up to stamp %d (%d events) not applied after %.1fs: re-sent (%d/%d)",
            batch.tenant,
            key[1],
            len(batch.bodies),
            self.timeout,
            batch.resends,
            self.max_resends,
        )

    def _give_up(self, key: tuple[str, int], now: float) -> None:
        batch = self._batches.pop(key)
        self.stats["inflight_unconfirmed"] += 1
        resync = now - self._resynced.get(batch.tenant, float("-inf")) >= RESYNC_INTERVAL
        logger.error(
            "tenant=%s batch up to stamp %d not applied after %d re-sends: %s",
            batch.tenant,
            key[1],
            batch.resends,
            "resyncing the tenant" if resync else "a resync was requested already",
        )
        if resync:
            self._resynced[batch.tenant] = now
            try:
                self.sender.preload(batch.tenant, "unconfirmed batch")
            except (KombuOperationalError, OSError) as exc:
                raise ConnectionLost(f"resync request failed: {exc}") from None
            self.stats["resyncs"] += 1
