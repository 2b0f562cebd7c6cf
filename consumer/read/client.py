"""SmartCRMConsumer: the read API of one tenant, the seed's methods in snake_case.

Thread-safe; fork-safe (after ``os.fork()`` the child drops the parent's connections and
background thread, distrusts its near-cache, and starts its own on first use). Usage::

    with SmartCRMConsumer("acme") as crm:
        cost = crm.get_credit_cost("crm.leads.create")  # a number; None: not configured
        if crm.check_permission("user-456", "crm.leads.create"):  # a bool
            ...

The seed-named methods return plain values, the ``*_detail`` method beside each the rich
answer (consumer/read/results.py: source, stale, age, reason). What each read returns when data is
missing, stale or not loaded: the docstrings below and docs/read-side.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from config.settings import Settings, get_settings
from consumer.read.background import Background
from consumer.read.balances import BalanceReader
from consumer.read.connection import ReaderConnection
from consumer.read.critical import CriticalReader
from consumer.read.metrics import ReadMetrics
from consumer.read.near_cache import NearCache
from consumer.read.read_through import LocalCopies
from consumer.read.readiness import PreloadRequests, enqueue_settlement
from consumer.read.reference import ReferenceReader
from consumer.read.results import CreditCost, Number, PermissionCheck, ReferenceResult
from crmcache.errors import StoreUnavailable
from crmcache.keyspace import RefKind, TenantKeys
from crmcache.store import Store
from crmcache.tenancy import validate_tenant

if TYPE_CHECKING:
    from crmcache.credits import Deduction
    from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

_live: weakref.WeakSet[SmartCRMConsumer] = weakref.WeakSet()
EXPIRY_KINDS = {"profile": RefKind.PROFILE, "user": RefKind.PROFILE, "hierarchy": RefKind.HIERARCHY}
NO_TTL_KINDS = ("credits", "balance")
JsonObject = dict[str, Any]
DEFAULT_OPERATION = "crm.credits.deduct"
"""The operationCode reported to the Wrapper for a deduction that names none."""


def live_consumers() -> list[SmartCRMConsumer]:
    """Every consumer of this process not shut down (what the Prometheus collector reports)."""
    return [c for c in list(_live) if not c.closed]


class SmartCRMConsumer:
    """Critical reads (near-cache, Redis), reference reads (read-through), metrics, one tenant."""

    def __init__(self, tenant_id: str, settings: Settings | None = None) -> None:
        self.tenant = validate_tenant(tenant_id)
        self.settings = settings or get_settings()
        self.keys = TenantKeys.of(self.tenant)
        self.closed = False
        self._conn = ReaderConnection(self.settings)
        self._store = Store(self._conn.client)
        self._wrapper: WrapperClient | None = None
        """Built on the first upstream call: a process doing only critical reads never
        imports the HTTP stack (a few MiB of RSS)."""
        self._metrics = ReadMetrics()
        self._near = NearCache(
            self.settings.near_cache_staleness_ms, self.settings.near_cache_max_entries
        )
        self._local = LocalCopies(self.settings.reference_local_max_entries)
        self._preloads = PreloadRequests(self.tenant, self.settings, self._conn)
        self._critical = CriticalReader(
            self.tenant, self.settings, self._conn, self._near, self._metrics, self._not_ready
        )
        self._reference = ReferenceReader(
            self.tenant, self.settings, self._conn, self._wrapper_client, self._metrics, self._local
        )
        self._balances = BalanceReader(
            self.tenant, self.settings, self._conn, self._wrapper_client, self._metrics, self._local
        )
        self._background = Background.for_settings(self.settings)
        self._started_pid = 0
        self._next_flush = 0.0
        self._flush_interval = self.settings.metrics_flush_interval
        self._lock = threading.Lock()
        _live.add(self)

    # --- lifecycle --------------------------------------------------------------------------------

    def initialize(self) -> SmartCRMConsumer:
        """Start the background thread, load the near-cache, and ask for a preload if the tenant
        was never loaded. Redis being down is not an error here: reads answer degraded until
        it is back. Reads work without calling this (the background starts on first use)."""
        self._start()
        try:
            loaded = self._critical.warm(self.settings.near_cache_warm_max)
        except StoreUnavailable:
            logger.warning("tenant=%s reader starts without Redis (degraded)", self.tenant)
            return self
        if not self._near.ready:
            self._preloads.request()
        logger.info("tenant=%s reader ready, %d near-cache entries", self.tenant, loaded)
        return self

    def shutdown(self) -> None:
        """Flush metrics, stop background work, close connections. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self._metrics.flush(self._conn, self.tenant)
        except StoreUnavailable:
            logger.info("tenant=%s final metrics flush skipped: Redis unavailable", self.tenant)
        self._background.discard(self)
        self._conn.close()
        if self._wrapper is not None:
            self._wrapper.close()

    def __enter__(self) -> SmartCRMConsumer:
        return self.initialize()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def _start(self) -> None:
        pid = os.getpid()
        if self._started_pid != pid:
            self._started_pid = pid
            self._background.add(self)
        else:
            self._background.ensure_running()

    def _wrapper_client(self) -> WrapperClient:
        client = self._wrapper
        if client is None:
            from crmcache.wrapper import WrapperClient

            with self._lock:
                if self._wrapper is None:
                    self._wrapper = WrapperClient(self.settings)
                client = self._wrapper
        return client

    def _not_ready(self) -> None:
        self._preloads.request()

    # --- critical reads: the seed's values, and the details beside them --------------------------

    def get_credit_cost(self, operation: str) -> Number | None:
        """The cost of ``operation`` (0 is a cost), None when it is not configured: test
        ``cost is None``, never ``not cost``. Raises as ``get_credit_cost_detail``."""
        return self.get_credit_cost_detail(operation).cost

    def check_permission(self, user_id: str, permission: str) -> bool:
        """Whether ``user_id`` may do ``permission``: False for an unknown, deleted or inactive
        user and for a grant its roles lack. Raises as ``check_permission_detail``."""
        return self.check_permission_detail(user_id, permission).authorized

    def get_credit_cost_detail(self, operation: str) -> CreditCost:
        """The cost of ``operation`` with its freshness. ``cost`` None: not configured (said
        only of a ready tenant). Never loaded: a preload is requested and ``TenantNotReady``
        raised, unless a last-known-good copy can answer (``stale``). Redis down: the
        last-known-good copy (``stale``, ``age_ms``), ``StaleDataTooOld`` past
        CRM_DEGRADED_MAX_AGE, ``StoreUnavailable`` with no copy."""
        if not self._started_pid:
            self._start()
        return self._critical.credit_cost(operation)

    def check_permission_detail(self, user_id: str, permission: str) -> PermissionCheck:
        """Whether ``user_id`` may do ``permission``: the user must exist and be active and one
        of its roles grant it (trailing wildcards match). ``reason`` says why. Not loaded and
        Redis down: as ``get_credit_cost_detail``."""
        if not self._started_pid:
            self._start()
        return self._critical.check_permission(user_id, permission)

    # --- answers without I/O (for an event loop) --------------------------------------------------

    def peek_credit_cost_detail(self, operation: str) -> CreditCost | None:
        """``get_credit_cost_detail``'s answer when the near-cache holds it (no I/O, never
        blocks); None when answering needs Redis: then call it off the event loop."""
        return self._critical.near_credit_cost(operation, time.perf_counter_ns())

    def peek_permission_detail(self, user_id: str, permission: str) -> PermissionCheck | None:
        """``check_permission_detail``'s answer when the near-cache holds it, else None."""
        return self._critical.near_permission(user_id, permission, time.perf_counter_ns())

    def peek_user_credits(self, user_id: str) -> Number | None:
        """The balance when this process holds it at the current version (every charge and
        top-up anywhere bumps the version, so a held balance is as fresh as the near-cache's
        costs), else None (no I/O)."""
        if not self.settings.near_cache:
            return None
        return self._near.balance(user_id, time.monotonic())

    def keep_user_credits(self, user_id: str, value: Number, version: int, epoch: bytes) -> bool:
        """Offer a balance read from Redis atomically with ``meta.version`` and ``meta.epoch``
        (``balance_peek.lua``) for ``peek_user_credits``; kept only when that is the version
        the near-cache knows. Returns whether it was kept."""
        return self._near.keep_balance(user_id, value, version, epoch)

    # --- reference reads: the seed's values, and the details beside them -------------------------

    def get_user_profile(self, user_id: str) -> JsonObject | None:
        """The profile (the Wrapper's JSON object), None when the Wrapper says there is no such
        user. Raises as ``get_user_profile_detail``."""
        return cast("JsonObject | None", self.get_user_profile_detail(user_id).value)

    def get_hierarchy(self, entity_id: str) -> JsonObject | None:
        """The hierarchy node, None when the Wrapper knows no such entity."""
        return cast("JsonObject | None", self.get_hierarchy_detail(entity_id).value)

    def get_user_credits(self, user_id: str) -> Number | None:
        """The available balance (a number), None when the Wrapper knows no such user (as
        ``get_user_profile`` says of its 404). Raises as ``get_user_credits_detail``."""
        return cast("Number | None", self.get_user_credits_detail(user_id).value)

    def get_user_profile_detail(self, user_id: str) -> ReferenceResult:
        """The profile, read through (TTL CRM_PROFILE_TTL). ``found`` False: the Wrapper said
        404 (cached CRM_NEGATIVE_TTL). Wrapper down: the last value, ``stale``, up to
        CRM_REFERENCE_MAX_STALE past its expiry, else ``WrapperUnavailable``."""
        self._start()
        return self._reference.get(RefKind.PROFILE, user_id)

    def get_hierarchy_detail(self, entity_id: str) -> ReferenceResult:
        """The hierarchy node, read through (TTL CRM_HIERARCHY_TTL); as
        ``get_user_profile_detail``."""
        self._start()
        return self._reference.get(RefKind.HIERARCHY, entity_id)

    def get_user_credits_detail(self, user_id: str) -> ReferenceResult:
        """The available balance: ``crm:{t}:balance:<user>``, read through from the Wrapper
        when missing and never overwritten once cached. ``expires_at`` is None."""
        self._start()
        return self._balances.get(user_id)

    def deduct_credits(
        self,
        user_id: str,
        amount: int | float | str,
        idempotency_key: str,
        *,
        operation: str = DEFAULT_OPERATION,
    ) -> Deduction:
        """Charge ``amount`` once per ``idempotency_key`` (``crmcache.credits.deduct``: one
        atomic Lua step, never negative, reported to the Wrapper exactly once by the
        settlement task). A balance not cached is read through like ``get_user_credits``.
        Fails closed: ``StoreUnavailable`` while Redis is down (never a stale balance),
        ``InsufficientCredits``, ``IdempotencyConflict``, ``BalanceUnknown``."""
        from crmcache import credits

        if self._conn.is_down:
            raise StoreUnavailable("Redis unreachable: deductions fail closed")
        deduction = credits.deduct(
            self._store,
            self._wrapper_client(),
            self.tenant,
            user_id=user_id,
            operation=operation,
            amount=amount,
            idempotency_key=idempotency_key,
            ttl_s=self.settings.idempotency_ttl,
            read_through=lambda: self.get_user_credits_detail(user_id),
        )
        if deduction.settle_now and not enqueue_settlement(self.tenant):
            # Let the next deduction try to enqueue rather than wait for the flag to expire.
            self._try(lambda: self._conn.delete(self.keys.settle_scheduled))
        return deduction

    def get_cache_expiry(self, key: str) -> float | None:
        """When the cached entry ``key`` stops being fresh, epoch seconds; None when nothing
        fresh is cached or the entry has no TTL. ``key``: ``profile:<id>`` (or the seed's
        ``user:<id>``), ``hierarchy:<id>``, ``credits:<id>`` (always None: no TTL)."""
        kind, sep, entity_id = key.partition(":")
        if not sep or not entity_id:
            raise ValueError(f"cache key {key!r} is not <kind>:<id>")
        if kind in NO_TTL_KINDS:
            return None
        if kind not in EXPIRY_KINDS:
            raise ValueError(f"unknown cache key kind {kind!r}")
        return self._reference.expiry(EXPIRY_KINDS[kind], entity_id)

    # --- metrics ----------------------------------------------------------------------------------

    def get_metrics(self) -> dict[str, Any]:
        """The seed's figures (criticalHitRate, referenceHitRate, overallHitRate, totalRequests,
        cacheSize, criticalCacheSize, referenceCacheSize) plus degraded/stale counts, per-class
        counters and latency percentiles of this process (see ``crmcache.read_metrics``)."""
        near = self._near
        summary = self._metrics.summary()
        critical_size, reference_size = near.size, len(self._local)
        summary.update(
            {
                "tenant": self.tenant,
                "cacheSize": critical_size + reference_size,
                "criticalCacheSize": critical_size,
                "referenceCacheSize": reference_size,
                "degraded": self._conn.is_down,
                "nearCache": {
                    "enabled": self.settings.near_cache,
                    "version": near.version,
                    "ready": near.ready,
                    "trusted": time.monotonic() < near.trusted_until,
                },
                "preloadRequests": self._preloads.sent,
                "wrapperBreaker": (
                    self._wrapper.breaker_state(self.tenant) if self._wrapper else "closed"
                ),
            }
        )
        return summary

    def flush_metrics(self) -> int:
        """Send this process's counters to Redis now (the background does it every
        CRM_METRICS_FLUSH_INTERVAL); returns the fields sent."""
        return self._metrics.flush(self._conn, self.tenant)

    def metrics_counts(self) -> dict[str, int]:
        """The raw counters (for the Prometheus collector)."""
        return self._metrics.counts()

    # --- background work (called by consumer.read.background) ---------------------------------

    @property
    def changes_channel(self) -> str:
        return self.keys.changes_channel

    def on_change(self, version: int, written: int | None, received: float) -> None:
        self._near.notify(version, written)

    def on_disconnect(self) -> None:
        self._near.distrust()

    def on_subscribed(self) -> None:
        """Notifications flow from now on; a change since the last confirmation may have gone
        unannounced, so confirm the version with a read that starts now (a newer version starts
        a generation). Only when that read fails is the near-cache distrusted, so a reader that
        just started does not bounce its first answers to Redis."""
        try:
            self._critical.check_version()
        except StoreUnavailable:
            self._near.distrust()

    def tick(self, now: float) -> None:
        conn, near = self._conn, self._near
        if conn.probe_due(now):
            if conn.probe():
                near.forget_version()  # Redis may have restarted empty: adopt what it says
                self._try(self._critical.check_version)
            return
        if conn.is_down:
            return
        if near.needs_check(now):
            self._try(self._critical.check_version)
        if now >= self._next_flush:
            self._next_flush = now + self._flush_interval
            self._try(self.flush_metrics)

    @staticmethod
    def _try(call: Callable[[], object]) -> None:
        try:
            call()
        except StoreUnavailable:
            pass  # the connection is marked down; the next tick probes

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, no trust, own counters, own HTTP connections."""
        self._lock = threading.Lock()
        self._near.reset_after_fork()
        self._conn.reset_after_fork()
        self._local.reset_after_fork()
        self._metrics.reset()
        self._started_pid = 0
        if self._wrapper is not None:
            self._wrapper.close()  # closes only this process's copies of the parent's sockets
            self._wrapper = None


def _after_fork_in_child() -> None:
    for consumer in list(_live):
        consumer._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
