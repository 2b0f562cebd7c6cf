"""One near-cache entry budget for every tenant of a process, shared fairly.

A process serving thousands of tenants must not grow without bound, and one tenant must not
keep the others out. Rule (max-min fairness): while the budget has room, any tenant may take
it; once it is spent, a tenant holding less than its fair share (the budget over the tenants
held) makes room by evicting the oldest entries of the tenant holding the most, and a tenant at
or above its share evicts its own oldest. So a busy tenant may use what idle ones leave, an idle
tenant's entries go first when others need room (and all of them when it is dropped after
``CRM_TENANT_IDLE_TIMEOUT``), and a tenant that stops reading never evicts anyone.

The count is kept under a lock on each new entry (a near-cache *miss*, never a hit) and
recounted from the tables by the background thread, so concurrent writers cannot make it drift.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Holder(Protocol):
    """A near-cache as the budget sees it."""

    @property
    def size(self) -> int: ...

    def evict_oldest(self) -> int:
        """Drop the oldest entries (about a tenth of the largest table); returns how many."""
        ...


class EntryBudget:
    """At most ``max_entries`` near-cache entries across every holder registered here."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(max_entries, 1)
        self.total = 0
        self._holders: set[Holder] = set()
        self._lock = threading.Lock()

    def register(self, holder: Holder) -> None:
        with self._lock:
            self._holders.add(holder)

    def release(self, holder: Holder) -> None:
        """``holder`` is gone (its tenant was dropped): its entries no longer count."""
        with self._lock:
            if holder in self._holders:
                self._holders.discard(holder)
                self.total = max(self.total - holder.size, 0)

    def admit(self, holder: Holder) -> None:
        """Count one new entry of ``holder``, first making room when the budget is spent."""
        with self._lock:
            if self.total >= self.max_entries:
                self.total -= self._victim(holder).evict_oldest()
            self.total += 1

    def _victim(self, holder: Holder) -> Holder:
        size = holder.size
        if size and (size >= self.max_entries // max(len(self._holders), 1)):
            return holder
        return max(self._holders | {holder}, key=lambda h: h.size)

    def recount(self) -> int:
        """Set the count from the holders' tables (fixes drift from racing writers)."""
        with self._lock:
            self.total = sum(h.size for h in self._holders)
            return self.total

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
