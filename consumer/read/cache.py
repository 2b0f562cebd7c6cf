"""CRMCache: one read client for every tenant of a process.

It owns what a process needs once, however many tenants it serves: one Redis connection pool
(consumer/read/connection.py), one pub/sub connection with one pattern subscription for every
tenant's change notifications and one background thread (consumer/read/background.py), one
Wrapper session, one metrics flusher (every tenant's counters in one pipeline), one near-cache
entry budget shared fairly by the tenants (consumer/read/budget.py) and one map of local
copies. A tenant's state (consumer/read/tenant.py) is built on its first read and dropped once
``CRM_TENANT_IDLE_TIMEOUT`` passes without one. Usage::

    crm = CRMCache(settings)
    acme = crm.tenant("acme")  # a light view with the seed's methods (consumer/read/view.py)
    acme.check_permission("user-456", "crm.leads.create")
    crm.close()

``SmartCRMConsumer("acme")`` is a view over ``CRMCache.shared(settings)``, the process's
default client for those settings. Thread-safe; fork-safe (a forked child distrusts every
near-cache, counts from zero and starts its own thread and connections on first use).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from config.settings import Settings, get_settings
from consumer.read.background import Background
from consumer.read.budget import EntryBudget
from consumer.read.connection import ReaderConnection
from consumer.read.critical import new_epoch
from consumer.read.metrics import flush_counters
from consumer.read.read_through import LocalCopies
from consumer.read.tenant import TenantState
from consumer.read.view import TenantView
from crmcache.errors import StoreUnavailable
from crmcache.store import Store
from crmcache.tenancy import validate_tenant

if TYPE_CHECKING:
    from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

_live: weakref.WeakSet[CRMCache] = weakref.WeakSet()
_shared: dict[Settings, CRMCache] = {}
_shared_lock = threading.Lock()
SWEEP_SECONDS = 1.0
"""How often the background looks for idle tenants and recounts the entry budget."""


class CRMCache:
    """The process's read client: every tenant's views, state and shared resources."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.conn = ReaderConnection(self.settings)
        self.store = Store(self.conn.client)
        """The write-side seam on the same pool, for deductions."""
        self.budget = EntryBudget(self.settings.near_cache_max_entries)
        self.local = LocalCopies(self.settings.reference_local_max_entries)
        self.running = False
        self.closed = False
        self.listening = False
        """True from a confirmed subscription to the change feed (its confirmation read done)
        until the feed is lost: while False, near-caches are kept by version checks alone."""
        self._tenants: dict[str, TenantState] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wrapper: WrapperClient | None = None
        """Built on the first upstream call: a process doing only critical reads never
        imports the HTTP stack (a few MiB of RSS)."""
        self._background = Background(self.settings, self)
        self._users = 0
        idle_s = self.settings.tenant_idle_timeout
        self._sweep_every = min(SWEEP_SECONDS, idle_s / 3) if idle_s else SWEEP_SECONDS
        self._next_flush = self._next_sweep = 0.0
        _live.add(self)

    # --- tenants ------------------------------------------------------------------------------

    def tenant(self, tenant_id: str) -> TenantView:
        """A view of one tenant (cheap: build one per request if that reads best)."""
        return TenantView(self, tenant_id)

    def state(self, tenant: str) -> TenantState:
        """The tenant's state, built on first use."""
        state = self._tenants.get(tenant)
        if state is None:
            with self._lock:
                state = self._tenants.get(tenant)
                if state is None:
                    state = TenantState(
                        validate_tenant(tenant),
                        self.settings,
                        self.conn,
                        self.wrapper,
                        self.budget,
                        self.local,
                    )
                    self._tenants[tenant] = state
        return state

    def tenants(self) -> list[str]:
        """The tenants this process holds now (read within CRM_TENANT_IDLE_TIMEOUT)."""
        return sorted(self._tenants)

    def wrapper(self) -> WrapperClient:
        """The one Wrapper session of the process (per-tenant circuit breakers inside)."""
        client = self._wrapper
        if client is None:
            from crmcache.wrapper import WrapperClient

            with self._lock:
                if self._wrapper is None:
                    self._wrapper = WrapperClient(self.settings)
                client = self._wrapper
        return client

    def breaker_state(self, tenant: str) -> str:
        wrapper = self._wrapper
        return wrapper.breaker_state(tenant) if wrapper is not None else "closed"

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> CRMCache:
        """Start the background thread (reads do it themselves on first use)."""
        self._background.ensure_running()
        self.running = True
        return self

    def close(self) -> None:
        """Flush every tenant's metrics, stop the thread, close the connections. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.running = False
        self.listening = False
        self._background.stop()
        try:
            self.flush_metrics()
        except StoreUnavailable:
            logger.info("final metrics flush skipped: Redis unavailable")
        self.conn.close()
        if self._wrapper is not None:
            self._wrapper.close()

    def __enter__(self) -> CRMCache:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def shared(cls, settings: Settings) -> CRMCache:
        """The process's default client for ``settings`` (SmartCRMConsumer's). Each call takes
        a reference; ``release`` gives it back, and the last one closes the client."""
        with _shared_lock:
            cache = _shared.get(settings)
            if cache is None or cache.closed:
                cache = _shared[settings] = cls(settings)
            cache._users += 1
            return cache

    def release(self) -> None:
        with _shared_lock:
            self._users -= 1
            last = self._users <= 0
            if last and _shared.get(self.settings) is self:
                del _shared[self.settings]
        if last:
            self.close()

    # --- metrics ------------------------------------------------------------------------------

    def flush_metrics(self, tenants: Iterable[str] | None = None) -> int:
        """Send the counters of ``tenants`` (default: all) to Redis in one round trip; returns
        the fields sent. The background does it every CRM_METRICS_FLUSH_INTERVAL."""
        names = list(self._tenants) if tenants is None else tenants
        pairs = [(t, s.metrics) for t in names if (s := self._tenants.get(t)) is not None]
        with self._flush_lock:
            return flush_counters(self.conn, pairs)

    def get_metrics(self) -> dict[str, Any]:
        """The process's figures: tenants held, near-cache entries and their budget."""
        return {
            "tenants": len(self._tenants),
            "nearCacheEntries": self.budget.total,
            "nearCacheBudget": self.budget.max_entries,
            "degraded": self.conn.is_down,
        }

    # --- background work (called by consumer.read.background) ---------------------------------

    def on_change(
        self, tenant: str, version: int, written: int | None, access: int | None = None
    ) -> None:
        state = self._tenants.get(tenant)
        if state is not None:
            state.near.notify(version, written, access)

    def on_disconnect(self) -> None:
        self.listening = False
        for state in list(self._tenants.values()):
            state.near.distrust()

    def on_subscribed(self) -> None:
        """Notifications flow from now on; a change since a tenant's last confirmation may have
        gone unannounced, so confirm every tenant with a read that starts now (one round trip).
        Only when that read fails are the near-caches distrusted, so that tenants just read do
        not bounce their next answers to Redis."""
        states = list(self._tenants.values())
        try:
            self._confirm(states)
        except StoreUnavailable:
            for state in states:
                state.near.distrust()
        self.listening = True

    def tick(self, now: float) -> None:
        states = list(self._tenants.values())
        conn = self.conn
        if conn.probe_due(now):
            if conn.probe():
                for state in states:
                    state.near.forget_version()  # Redis may have restarted empty: adopt it
                self._quietly(lambda: self._confirm(states))
            return
        if conn.is_down:
            return
        self._quietly(lambda: self._confirm([s for s in states if s.near.needs_check(now)]))
        if now >= self._next_flush:
            self._next_flush = now + self.settings.metrics_flush_interval
            self._quietly(self.flush_metrics)
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_every
            self._drop_idle(states, now)
            self.budget.recount()

    def _confirm(self, states: list[TenantState]) -> None:
        """Confirm (or advance) each tenant's epoch and version: one round trip for all."""
        if not states:
            return
        read_at = time.monotonic()
        metas = self.conn.metas([s.keys.meta for s in states], [new_epoch() for _ in states])
        for state, meta in zip(states, metas, strict=True):
            state.near.observe(meta.epoch, meta.version, read_at, meta.ready)

    def _drop_idle(self, states: list[TenantState], now: float) -> None:
        idle_s = self.settings.tenant_idle_timeout
        for state in states:
            state.note_use(now)
        idle = [s for s in states if idle_s and s.idle_for(now) > idle_s]
        if not idle:
            return
        self._quietly(lambda: self.flush_metrics([s.tenant for s in idle]))
        with self._lock:
            for state in idle:
                if self._tenants.get(state.tenant) is state and not state.note_use(now):
                    del self._tenants[state.tenant]
                    state.dropped = True
        for state in idle:
            if state.dropped:
                self.budget.release(state.near)
                self.local.drop(state.tenant)
        logger.debug("dropped %d idle tenants", sum(s.dropped for s in idle))

    @staticmethod
    def _quietly(call: Callable[[], object]) -> None:
        try:
            call()
        except StoreUnavailable:
            pass  # the connection is marked down; the next tick probes

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, no trust, own counters, own thread and sockets."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.running = False
        self.listening = False
        self.conn.reset_after_fork()
        self.budget.reset_after_fork()
        self.local.reset_after_fork()
        self._background.after_fork()
        for state in self._tenants.values():
            state.after_fork()
        if self._wrapper is not None:
            self._wrapper.close()  # closes only this process's copies of the parent's sockets
            self._wrapper = None


def live_tenants() -> list[TenantView]:
    """A view of every tenant held by every open client of the process (what the Prometheus
    collector reports)."""
    return [c.tenant(t) for c in list(_live) if not c.closed for t in c.tenants()]


def _after_fork_in_child() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()
    for cache in list(_live):
        cache._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
