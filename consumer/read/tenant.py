"""What one tenant holds in a process: its near-cache, counters, preload requests, and the
critical, reference and balance readers over the client's shared connection, Wrapper session,
entry budget and local copies.

Built on the tenant's first read (no I/O: a cold tenant's first answer costs one Redis round
trip) and dropped once ``CRM_TENANT_IDLE_TIMEOUT`` passes without a read (the background sees
reads in the tenant's counters); a view that still holds a dropped state builds a new one on
its next read (``TenantState.dropped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from consumer.read.balances import BalanceReader
from consumer.read.critical import CriticalReader
from consumer.read.metrics import ReadMetrics
from consumer.read.near_cache import NearCache
from consumer.read.readiness import PreloadRequests
from consumer.read.reference import ReferenceReader
from crmcache.keyspace import TenantKeys

if TYPE_CHECKING:
    from config.settings import Settings
    from consumer.read.budget import EntryBudget
    from consumer.read.connection import ReaderConnection
    from consumer.read.read_through import LocalCopies
    from consumer.read.reservations import Reservations
    from crmcache.wrapper import WrapperClient


class TenantState:
    """One tenant's readers and copies in one process."""

    __slots__ = (
        "tenant",
        "keys",
        "metrics",
        "near",
        "preloads",
        "local",
        "critical",
        "reference",
        "balances",
        "reservations",
        "last_used",
        "_reads_seen",
        "dropped",
    )

    def __init__(
        self,
        tenant: str,
        settings: Settings,
        conn: ReaderConnection,
        wrapper: Callable[[], WrapperClient],
        budget: EntryBudget,
        local: LocalCopies,
    ) -> None:
        """The parts of the process's client (consumer/read/cache.py) a tenant reads through."""
        self.tenant = tenant
        self.keys = TenantKeys.of(tenant)
        self.metrics = ReadMetrics()
        self.near = NearCache(settings.near_cache_staleness_ms, budget=budget)
        self.preloads = PreloadRequests(tenant, settings, conn)
        self.local = local.of(tenant)
        self.critical = CriticalReader(
            tenant, settings, conn, self.near, self.metrics, self.preloads.request
        )
        self.reference = ReferenceReader(tenant, settings, conn, wrapper, self.metrics, self.local)
        self.balances = BalanceReader(tenant, settings, conn, wrapper, self.metrics, self.local)
        self.reservations: Reservations | None = None
        """Built by the first credit operation of a view (consumer/read/view.py)."""
        self.last_used = time.monotonic()
        """When the background last saw this tenant's read counters move."""
        self._reads_seen = 0
        self.dropped = False

    def note_use(self, now: float) -> bool:
        """Called by the background every tick: whether the tenant was read since the last
        call (its counters moved: reads mark nothing else, so the hot path stays as it was)."""
        reads = self.metrics.reads()
        if reads == self._reads_seen:
            return False
        self._reads_seen = reads
        self.last_used = now
        return True

    def idle_for(self, now: float) -> float:
        return now - self.last_used

    def after_fork(self) -> None:
        """In a forked child: a fresh near-cache lock and no trust, counters from zero."""
        self.near.reset_after_fork()
        self.metrics.reset()
