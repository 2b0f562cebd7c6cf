"""Micro-batching per tenant: pure logic, no I/O.

A batch is due when a tenant has `batch_size` events, when the oldest pending event has waited
`flush_interval` seconds, or when the subscriber's socket has nothing more to give (`idle`) and
the last flush is at least `flush_interval` ago. So a lone event is sent at once, while under
steady traffic events are grouped into at most one flush per interval: one Celery task per
event would drain only a few hundred events a second.
"""

from __future__ import annotations

from crmcache.events import Event


class Batcher:
    def __init__(self, batch_size: int, flush_interval: float) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._pending: dict[str, list[Event]] = {}
        self._count = 0
        self._oldest: float | None = None
        self._full = False
        self._last_flush = float("-inf")

    def __len__(self) -> int:
        return self._count

    def add(self, event: Event, now: float) -> None:
        batch = self._pending.setdefault(event.tenant, [])
        batch.append(event)
        self._count += 1
        if self._oldest is None:
            self._oldest = now
        if len(batch) >= self.batch_size:
            self._full = True

    def due(self, now: float, idle: bool) -> bool:
        if not self._count:
            return False
        assert self._oldest is not None
        if self._full or now - self._oldest >= self.flush_interval:
            return True
        return idle and now - self._last_flush >= self.flush_interval

    def wait_time(self, now: float, ceiling: float) -> float:
        """How long the subscriber may block reading before a batch becomes due."""
        if self._oldest is None:
            return ceiling
        due_at = min(self._oldest, self._last_flush) + self.flush_interval
        return max(0.0, min(ceiling, due_at - now))

    def drain(self, now: float) -> dict[str, list[Event]]:
        """Every pending event, per tenant in receipt order; the batcher is empty afterwards."""
        pending, self._pending = self._pending, {}
        self._count, self._oldest, self._full = 0, None, False
        self._last_flush = now
        return pending
