"""Micro-batching per tenant: pure logic, no I/O.

A batch is due when a tenant has `batch_size` events, when the oldest pending event has waited
`flush_interval` seconds, or as soon as the subscriber's socket has nothing more to give
(`idle`), so that a lone event is never held back.
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
        return idle or self._full or now - self._oldest >= self.flush_interval

    def wait_time(self, now: float, ceiling: float) -> float:
        """How long the subscriber may block reading before a batch becomes due."""
        if self._oldest is None:
            return ceiling
        return max(0.0, min(ceiling, self._oldest + self.flush_interval - now))

    def drain(self) -> dict[str, list[Event]]:
        """Every pending event, per tenant in receipt order, split into batch_size chunks
        later by the caller; the batcher is empty afterwards."""
        pending, self._pending = self._pending, {}
        self._count, self._oldest, self._full = 0, None, False
        return pending
