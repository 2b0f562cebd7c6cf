"""Micro-batching per tenant: pure logic, no I/O.

A batch is due when a tenant has `batch_size` events, when the oldest pending event has waited
`flush_interval` seconds, or when the subscriber's socket has nothing more to give (`idle`) and
the last flush is at least `flush_interval` ago. So a lone event is sent at once, while under
steady traffic events are grouped into at most one flush per interval: one Celery task per
event would drain only a few hundred events a second.

Tenants in `bulk` (those flooding, see ``consumer/ingest/lanes.py``) batch bigger while the
socket is busy: a flush that is due for other tenants leaves a bulk tenant's partial batch
pending until it holds `bulk_batch_size` events or is `bulk_flush_interval` old. Batches so
grow with the backlog (fewer, larger tasks drain a flood with less overhead), a quiet tenant's
flush never waits for them, and an idle socket still sends everything at once: a busy tenant
that the pipeline keeps up with gets no extra latency.

Except for revocations: a bulk tenant's batch that holds an event that may take access away (a
user suspended or deleted, a role changed or deleted) is due like an interactive tenant's, and
the subscriber sends those events in a batch of their own on the interactive lane; a flood of
them still makes at most one such batch per `flush_interval`. With `revoke_at_once` (the
urgent lane, ``CRM_URGENT_LANE``) such an event does not even wait for the interval: it makes
every pending batch due at once, whichever the tenant; under a flood of them the batches still
grow with the backlog, since each turn of the subscriber reads what arrived meanwhile.
"""

from __future__ import annotations

from crmcache.events import Event, may_revoke


class Batcher:
    def __init__(
        self,
        batch_size: int,
        flush_interval: float,
        bulk_batch_size: int | None = None,
        bulk_flush_interval: float | None = None,
        revoke_at_once: bool = False,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.bulk_batch_size = bulk_batch_size or batch_size
        self.bulk_flush_interval = bulk_flush_interval or flush_interval
        self.bulk: frozenset[str] = frozenset()
        self._pending: dict[str, list[Event]] = {}
        self._first: dict[str, float] = {}
        self._urgent: set[str] = set()
        """Bulk tenants whose pending batch holds an event that may revoke access
        (``crmcache.events.may_revoke``): their batch is due like an interactive one."""
        self.revoke_at_once = revoke_at_once
        self._revoking = False
        """A pending event may revoke access (and ``revoke_at_once``): a flush is due now."""
        self._count = 0
        self._full = False
        self._last_flush = float("-inf")

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        """Some tenant's batch reached its size: a flush is due now."""
        return self._full

    def _limits(self, tenant: str) -> tuple[int, float]:
        if tenant in self.bulk and tenant not in self._urgent:
            return self.bulk_batch_size, self.bulk_flush_interval
        return self.batch_size, self.flush_interval

    def add(self, event: Event, now: float) -> None:
        batch = self._pending.setdefault(event.tenant, [])
        batch.append(event)
        self._count += 1
        if len(batch) == 1:
            self._first[event.tenant] = now
        if len(batch) >= self._limits(event.tenant)[0]:
            self._full = True
        if may_revoke(event):
            self._urgent.add(event.tenant)
            self._revoking = self.revoke_at_once

    def _ripe(self, tenant: str, now: float) -> bool:
        """A bulk tenant's batch is due only when full or old enough."""
        limit, interval = self._limits(tenant)
        return len(self._pending[tenant]) >= limit or now >= self._first[tenant] + interval

    def _revoking_in(self, tenant: str) -> bool:
        return self._revoking and tenant in self._urgent

    def due(self, now: float, idle: bool) -> bool:
        if not self._count:
            return False
        if self._full or self._revoking:
            return True
        if idle and now - self._last_flush >= self.flush_interval:
            return True
        interactive = [t for t in self._first if t not in self.bulk or t in self._urgent]
        if interactive and now - min(self._first[t] for t in interactive) >= self.flush_interval:
            return True
        return any(self._ripe(t, now) for t in self._first if t in self.bulk)

    def wait_time(self, now: float, ceiling: float) -> float:
        """How long the subscriber may block reading before a batch becomes due (while it
        blocks, the socket is idle, and an idle socket makes every pending batch due)."""
        if not self._first:
            return ceiling
        due_at = min(min(self._first.values()), self._last_flush) + self.flush_interval
        return max(0.0, min(ceiling, due_at - now))

    def drain(self, now: float, everything: bool = True) -> dict[str, list[Event]]:
        """Pending events per tenant in receipt order. With `everything` False, a bulk tenant's
        batch stays pending unless it is full or old enough; every other tenant's is sent."""
        if everything or not self.bulk:
            pending, self._pending, self._first = self._pending, {}, {}
            self._urgent.clear()
        else:
            pending = {}
            for tenant in list(self._pending):
                if tenant not in self.bulk or self._revoking_in(tenant) or self._ripe(tenant, now):
                    pending[tenant] = self._pending.pop(tenant)
                    del self._first[tenant]
                    self._urgent.discard(tenant)
        self._count -= sum(len(events) for events in pending.values())
        self._full = self._revoking = False
        self._last_flush = now
        return pending
