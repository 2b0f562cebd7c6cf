"""Fair sharing between tenants: which lane (event queue) a tenant's batch takes.

A tenant that floods (a bulk import of 50,000 user changes) must not hold back another tenant's
permission change. Events may be applied in any order (the store keeps the newest stamp), so a
tenant's batches can move between queues freely. The subscriber therefore sends a tenant that
sent more than ``threshold`` events within about the last second to the *bulk* lane
(``crm.events.bulk``) in large batches, and every other tenant to the *interactive* lane
(``crm.events``) in small ones. Workers consume both queues in turn, so an interactive batch
waits for at most the bulk batches already running, never for the whole import.

Pure logic, no I/O: the rate is an exponentially decaying count with a one-second time
constant; a tenant leaves the bulk lane when its rate falls under half the threshold, so that a
steady flood does not flap between lanes. ``lane_batches`` splits a tenant's batch by lane: a
flooding tenant's revocations go first, on the interactive lane; with the urgent lane on
(``CRM_URGENT_LANE``, the default) every tenant's revocations go first, on the *urgent* lane
(``crm.events.urgent``), which a dedicated worker serves without the prefork hop and without
waiting behind other batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from crmcache.events import Event, may_revoke

INTERACTIVE, BULK, URGENT = "interactive", "bulk", "urgent"
"""The lanes: crm.events, crm.events.bulk, crm.events.urgent (config/celery.py)."""
TIME_CONSTANT = 1.0
"""Seconds: a burst of N events counts about N/e after this long."""


class LaneRouter:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._rates: dict[str, tuple[float, float]] = {}
        self._bulk: set[str] = set()
        self._observed = 0

    @property
    def bulk(self) -> frozenset[str]:
        """Tenants in the bulk lane now."""
        return frozenset(self._bulk)

    def is_bulk(self, tenant: str) -> bool:
        return tenant in self._bulk

    def rate(self, tenant: str, now: float) -> float:
        """About how many events `tenant` sent within the last second."""
        count, at = self._rates.get(tenant, (0.0, now))
        return count * math.exp(-(now - at) / TIME_CONSTANT)

    def observe(self, counts: Iterable[tuple[str, int]], now: float) -> None:
        """Count events received per tenant; move tenants between lanes."""
        for tenant, count in counts:
            rate = self.rate(tenant, now) + count
            self._rates[tenant] = (rate, now)
            if rate > self.threshold:
                self._bulk.add(tenant)
        self._observed += 1
        if self._bulk or self._observed % 1000 == 0:
            self._cool_down(now)

    def _cool_down(self, now: float) -> None:
        for tenant in list(self._bulk):
            if self.rate(tenant, now) < self.threshold / 2:
                self._bulk.discard(tenant)
        if self._observed % 1000 == 0:  # forget quiet tenants: memory stays bounded
            for tenant in [t for t in self._rates if self.rate(t, now) < 1.0]:
                del self._rates[tenant]


def lane_batches(
    events: list[Event],
    bodies: list[Any],
    bulk: bool,
    size: int,
    bulk_size: int,
    urgent_lane: bool = False,
) -> Iterator[tuple[str, list[Any]]]:
    """A tenant's task bodies (one per event) as (lane, batch). Events that may revoke access
    leave first, in batches of their own: on the urgent lane when ``urgent_lane``, else (for a
    bulk tenant) on the interactive lane. Order does not matter to the store (stamps), and a
    suspension must not queue behind a flood."""
    if not bulk and not urgent_lane:
        for start in range(0, len(bodies), size):
            yield INTERACTIVE, bodies[start : start + size]
        return
    revoking = [may_revoke(e) for e in events]
    first = [b for b, r in zip(bodies, revoking, strict=True) if r]
    rest = [b for b, r in zip(bodies, revoking, strict=True) if not r]
    for start in range(0, len(first), size):
        yield URGENT if urgent_lane else INTERACTIVE, first[start : start + size]
    lane, step = (BULK, bulk_size) if bulk else (INTERACTIVE, size)
    for start in range(0, len(rest), step):
        yield lane, rest[start : start + step]
