"""A tenant's read API over a ``CRMCache``: the seed's methods in snake_case.

A view is light (a few attributes, no connection, no thread): ``crm.tenant("acme")`` builds
one, and as many as wanted. What it reads is the tenant's state in the client (near-cache,
counters, readers), built on the first read and rebuilt after an idle drop. Usage::

    crm = CRMCache(settings)
    acme = crm.tenant("acme")
    cost = acme.get_credit_cost("crm.leads.create")  # a number; None: not configured
    if acme.check_permission("user-456", "crm.leads.create"):  # a bool
        ...

The seed-named methods return plain values, the ``*_detail`` method beside each the rich
answer (consumer/read/results.py: source, stale, age, reason; the place where a per-request
consistency level and a version token would go). What each read returns when data is missing,
stale or not loaded: the docstrings below and docs/read-side.md.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

from consumer.read.consistency import ConsistencyArg, consistency_of
from consumer.read.reservations import CreditHold, Reservations
from consumer.read.results import CreditCost, Number, PermissionCheck, ReferenceResult
from consumer.read.tenant import TenantState
from crmcache.errors import StoreUnavailable
from crmcache.keyspace import RefKind, TenantKeys
from crmcache.tenancy import validate_tenant

if TYPE_CHECKING:
    from config.settings import Settings
    from consumer.read.connection import ReaderConnection
    from crmcache.credits import Deduction
    from crmcache.store import Store
    from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

EXPIRY_KINDS = {"profile": RefKind.PROFILE, "user": RefKind.PROFILE, "hierarchy": RefKind.HIERARCHY}
NO_TTL_KINDS = ("credits", "balance")
JsonObject = dict[str, Any]
DEFAULT_OPERATION = "crm.credits.deduct"
"""The operationCode reported to the Wrapper for a deduction that names none."""


class ReadClient(Protocol):
    """What a view needs of the process's client (``consumer.read.cache.CRMCache``)."""

    settings: Settings
    conn: ReaderConnection
    store: Store
    running: bool

    def wrapper(self) -> WrapperClient: ...
    def start(self) -> object: ...
    def state(self, tenant: str) -> TenantState: ...
    def flush_metrics(self, tenants: list[str] | None = None) -> int: ...
    def breaker_state(self, tenant: str) -> str: ...
    def get_metrics(self) -> dict[str, Any]: ...


class TenantView:
    """Critical reads (near-cache, Redis), reference reads (read-through), metrics: one tenant."""

    __slots__ = ("tenant", "cache", "settings", "keys", "closed", "_state")

    def __init__(self, cache: ReadClient, tenant_id: str) -> None:
        self.tenant = validate_tenant(tenant_id)
        self.cache = cache
        self.settings = cache.settings
        self.keys = TenantKeys.of(self.tenant)
        self.closed = False
        self._state: TenantState | None = None

    def _live(self) -> TenantState:
        """The tenant's state for a read (built on the first, again after an idle drop)."""
        state = self._state
        if state is None or state.dropped:
            state = self._state = self.cache.state(self.tenant)
        return state

    def _running(self) -> TenantState:
        if not self.cache.running:
            self.cache.start()
        return self._live()

    # --- lifecycle --------------------------------------------------------------------------------

    def initialize(self) -> Self:
        """Start the client's background thread, load the tenant's near-cache, and ask for a
        preload if the tenant was never loaded. Redis being down is not an error here: reads
        answer degraded until it is back. Reads work without calling this."""
        state = self._running()
        try:
            loaded = state.critical.warm(self.settings.near_cache_warm_max)
        except StoreUnavailable:
            logger.warning("tenant=%s reader starts without Redis (degraded)", self.tenant)
            return self
        if not state.near.ready:
            state.preloads.request()
        logger.info("tenant=%s reader ready, %d near-cache entries", self.tenant, loaded)
        return self

    def shutdown(self) -> None:
        """Flush this tenant's metrics; the client's connections stay (``CRMCache.close``)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.cache.flush_metrics([self.tenant])
        except StoreUnavailable:
            logger.info("tenant=%s final metrics flush skipped: Redis unavailable", self.tenant)

    def __enter__(self) -> Self:
        return self.initialize()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # --- critical reads: the seed's values, and the details beside them --------------------------

    def get_credit_cost(self, operation: str, consistency: ConsistencyArg = None) -> Number | None:
        """The cost of ``operation`` (0 is a cost), None when it is not configured: test
        ``cost is None``, never ``not cost``. Raises as ``get_credit_cost_detail``."""
        return self.get_credit_cost_detail(operation, consistency).cost

    def check_permission(
        self, user_id: str, permission: str, consistency: ConsistencyArg = None
    ) -> bool:
        """Whether ``user_id`` may do ``permission``: False for an unknown, deleted or inactive
        user and for a grant its roles lack. Raises as ``check_permission_detail``."""
        return self.check_permission_detail(user_id, permission, consistency).authorized

    def get_credit_cost_detail(
        self, operation: str, consistency: ConsistencyArg = None
    ) -> CreditCost:
        """The cost of ``operation`` with its freshness. ``cost`` None: not configured (said
        only of a ready tenant). Never loaded: a preload is requested and ``TenantNotReady``
        raised, unless a last-known-good copy can answer (``stale``). Redis down: the
        last-known-good copy (``stale``, ``age_ms``), ``StaleDataTooOld`` past
        CRM_DEGRADED_MAX_AGE, ``StoreUnavailable`` with no copy.

        ``consistency`` (consumer/read/consistency.py): ``minimize_latency`` (None, the
        default) as above; ``AtLeastAsFresh(token)`` or ``"at_least_as_fresh:<token>"``: only
        data at or past ``token``, waiting up to CRM_CONSISTENCY_WAIT_MS, then
        ``TokenNotReached``; ``"fully_consistent"``: from Redis. Both strong levels raise
        ``StoreUnavailable`` / ``TenantNotReady`` rather than answer from last-known-good;
        a malformed token raises ``InvalidToken``. ``.token`` is the answer's own token."""
        level = consistency_of(consistency)
        return self._running().critical.credit_cost(operation, level)

    def check_permission_detail(
        self, user_id: str, permission: str, consistency: ConsistencyArg = None
    ) -> PermissionCheck:
        """Whether ``user_id`` may do ``permission``: the user must exist and be active and one
        of its roles grant it (trailing wildcards match). ``reason`` says why. Not loaded and
        Redis down and ``consistency``: as ``get_credit_cost_detail``."""
        level = consistency_of(consistency)
        return self._running().critical.check_permission(user_id, permission, level)

    # --- answers without I/O (for an event loop) --------------------------------------------------

    def peek_credit_cost_detail(self, operation: str) -> CreditCost | None:
        """``get_credit_cost_detail``'s answer when the near-cache holds it (no I/O, never
        blocks); None when answering needs Redis: then call it off the event loop."""
        return self._live().critical.near_credit_cost(operation, time.perf_counter_ns())

    def peek_permission_detail(self, user_id: str, permission: str) -> PermissionCheck | None:
        """``check_permission_detail``'s answer when the near-cache holds it, else None."""
        state = self._live()
        return state.critical.near_permission(user_id, permission, time.perf_counter_ns())

    def peek_user_credits(self, user_id: str) -> Number | None:
        """The balance when this process holds it at the current version (every charge and
        top-up anywhere bumps the version, so a held balance is as fresh as the near-cache's
        costs), else None (no I/O)."""
        if not self.settings.near_cache:
            return None
        return self._live().near.balance(user_id, time.monotonic())

    def keep_user_credits(self, user_id: str, value: Number, version: int, epoch: bytes) -> bool:
        """Offer a balance read from Redis atomically with ``meta.version`` and ``meta.epoch``
        (``balance_peek.lua``) for ``peek_user_credits``; kept only when that is the version
        the near-cache knows. Returns whether it was kept."""
        return self._live().near.keep_balance(user_id, value, version, epoch)

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
        return self._running().reference.get(RefKind.PROFILE, user_id)

    def get_hierarchy_detail(self, entity_id: str) -> ReferenceResult:
        """The hierarchy node, read through (TTL CRM_HIERARCHY_TTL); as
        ``get_user_profile_detail``."""
        return self._running().reference.get(RefKind.HIERARCHY, entity_id)

    def get_user_credits_detail(self, user_id: str) -> ReferenceResult:
        """The available balance: ``crm:{t}:balance:<user>``, read through from the Wrapper
        when missing and never overwritten once cached. ``expires_at`` is None."""
        return self._running().balances.get(user_id)

    @property
    def reservations(self) -> Reservations:
        """The tenant's credit operations by hold id: commit, void, status, balance (available
        and held) — consumer/read/reservations.py."""
        state = self._live()
        if state.reservations is None:
            state.reservations = Reservations(
                self.tenant,
                self.settings,
                self.cache.store,
                self.cache.wrapper,
                self.get_user_credits_detail,
                self.get_credit_cost,
            )
        return state.reservations

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
        settlement task); a balance not cached is read through. Fails closed: StoreUnavailable
        while Redis is down (never a stale balance), InsufficientCredits, IdempotencyConflict,
        BalanceUnknown."""
        if self.cache.conn.is_down:
            raise StoreUnavailable("Redis unreachable: deductions fail closed")
        return self.reservations.deduct(user_id, amount, idempotency_key, operation)

    def reserve_credits(
        self, user_id: str, operation: str, idempotency_key: str, *, amount: Number | None = None
    ) -> CreditHold:
        """Hold the cost of ``operation`` (or ``amount``) until commit or void, at most
        CRM_HOLD_TIMEOUT s; fails closed (consumer/read/reservations.py, also for by-id use)."""
        if self.cache.conn.is_down:
            raise StoreUnavailable("Redis unreachable: reservations fail closed")
        return self.reservations.reserve(user_id, operation, idempotency_key, amount)

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
        return self._live().reference.expiry(EXPIRY_KINDS[kind], entity_id)

    # --- metrics ----------------------------------------------------------------------------------

    def get_metrics(self) -> dict[str, Any]:
        """The seed's figures (criticalHitRate, referenceHitRate, overallHitRate, totalRequests,
        cacheSize, criticalCacheSize, referenceCacheSize) plus degraded/stale counts, per-class
        counters and latency percentiles of this tenant in this process (see
        ``crmcache.read_metrics``), and the process's client (``CRMCache.get_metrics``)."""
        state = self._live()
        near = state.near
        summary = state.metrics.summary()
        critical_size, reference_size = near.size, len(state.local)
        summary.update(
            {
                "tenant": self.tenant,
                "cacheSize": critical_size + reference_size,
                "criticalCacheSize": critical_size,
                "referenceCacheSize": reference_size,
                "degraded": self.cache.conn.is_down,
                "nearCache": {
                    "enabled": self.settings.near_cache,
                    "version": near.version,
                    "ready": near.ready,
                    "trusted": time.monotonic() < near.trusted_until,
                },
                "preloadRequests": state.preloads.sent,
                "creditsLowCrossings": (
                    state.reservations.low_balance_crossings if state.reservations else 0
                ),
                "wrapperBreaker": self.cache.breaker_state(self.tenant),
                "process": self.cache.get_metrics(),
            }
        )
        return summary

    def flush_metrics(self) -> int:
        """Send this tenant's counters to Redis now (the background does it every
        CRM_METRICS_FLUSH_INTERVAL for every tenant); returns the fields sent."""
        return self.cache.flush_metrics([self.tenant])

    def metrics_counts(self) -> dict[str, int]:
        """The raw counters (for the Prometheus collector)."""
        return self._live().metrics.counts()
