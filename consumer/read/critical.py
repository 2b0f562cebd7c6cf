"""Critical reads: credit costs and permission checks, near-cache first, Redis in one round trip.

Answers, in order of preference:

1. the near-cache, when its generation is current and confirmed within the staleness bound;
2. Redis, one Lua call returning the data with the version and readiness it was read at (which
   also refills the near-cache and confirms it);
3. the last-known-good copy (near-cache entries of any generation), flagged ``stale`` with its
   age, when Redis is unreachable or the tenant lost its data, up to ``CRM_DEGRADED_MAX_AGE``;
   past that ``StaleDataTooOld``; with no copy at all ``StoreUnavailable`` / ``TenantNotReady``.

"Not configured" and "unknown user" are only ever said of a ready tenant.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from config.settings import Settings
from consumer.read.connection import Meta, ReaderConnection
from consumer.read.consistency import DEFAULT, Consistency, MinimizeLatency
from consumer.read.decode import parse_cost, parse_grants, parse_role_ids, parse_status
from consumer.read.fresh import read_strong
from consumer.read.metrics import ReadMetrics
from consumer.read.near_cache import Entry, NearCache
from consumer.read.permissions import ACTIVE, Decision, Grants, decide
from consumer.read.results import CreditCost, PermissionCheck, Source
from crmcache.errors import StaleDataTooOld, StoreUnavailable, TenantNotReady
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.tokens import version_token

logger = logging.getLogger(__name__)

COSTS, PERMISSIONS = "credit-costs", "permissions"
WARM_CLASSES = (
    DataClass.CREDIT_COSTS,
    DataClass.USER_STATUS,
    DataClass.USER_ROLES,
    DataClass.ROLES,
)
_perf_ns = time.perf_counter_ns
_monotonic = time.monotonic


_NO_META = Meta(None, 0, False)
"""The meta of an answer not read from Redis (last-known-good): satisfies no token."""
_epoch_prefix = secrets.token_hex(6)
_epoch_counter = itertools.count()


def new_epoch() -> str:
    """A candidate for meta.epoch, stored by the first read that finds none (read_cost.lua).
    Unique for every call: after Redis lost the data, nobody may re-create the old epoch."""
    return f"{_epoch_prefix}-{next(_epoch_counter)}"


def _check(
    user_id: str,
    permission: str,
    decision: Decision,
    stale: bool,
    age: float,
    source: Source,
    token: str,
) -> PermissionCheck:
    granted = decision is Decision.GRANTED
    return PermissionCheck(
        user_id, permission, granted, decision.value, True, stale, age, source, token
    )


class CriticalReader:
    """One tenant's critical reads in this process, over its near-cache."""

    __slots__ = (
        "tenant",
        "keys",
        "near",
        "serve_near",
        "max_age_ms",
        "wait_ms",
        "conn",
        "metrics",
        "on_not_ready",
        "_cost_keys",
        "_access_keys",
    )

    def __init__(
        self,
        tenant: str,
        settings: Settings,
        conn: ReaderConnection,
        near: NearCache,
        metrics: ReadMetrics,
        on_not_ready: Callable[[], object],
    ) -> None:
        self.tenant = tenant
        self.keys = TenantKeys.of(tenant)
        self.near = near
        self.serve_near = settings.near_cache
        self.max_age_ms = settings.degraded_max_age * 1000.0
        self.wait_ms = settings.consistency_wait_ms
        self.conn = conn
        self.metrics = metrics
        self.on_not_ready = on_not_ready
        k = self.keys
        self._cost_keys = [k.meta, k.values(DataClass.CREDIT_COSTS)]
        self._access_keys = [
            k.meta,
            k.values(DataClass.USER_STATUS),
            k.values(DataClass.USER_ROLES),
            k.values(DataClass.ROLES),
        ]

    # --- credit costs --------------------------------------------------------------------------

    def credit_cost(self, operation: str, consistency: Consistency = DEFAULT) -> CreditCost:
        start = _perf_ns()
        if isinstance(consistency, MinimizeLatency):
            answer = self.near_credit_cost(operation, start)
            if answer is not None:
                return answer
            return self._credit_cost_from_redis(operation, start)[0]
        return read_strong(
            consistency,
            self.near,
            lambda: self.near_credit_cost(operation, start),
            lambda field: self._credit_cost_from_redis(operation, start, field, strict=True),
            self.wait_ms,
        )

    def near_credit_cost(self, operation: str, start: int) -> CreditCost | None:
        """The near-cache's answer, or None when it cannot give one (no I/O)."""
        near = self.near
        entry = near.costs.get(operation)
        if entry is not None and self.serve_near:
            now = _monotonic()
            token = near.token
            if entry[1] == near.gen and now < near.trusted_until:
                age = (now - near.confirmed_at) * 1000.0
                result = CreditCost(operation, entry[0], True, False, age, "near-cache", token)
                self.metrics.record_near_hit(COSTS, _perf_ns() - start)
                return result
        return None

    def _credit_cost_from_redis(
        self, operation: str, start: int, seq_field: str = "", *, strict: bool = False
    ) -> tuple[CreditCost, Meta, int]:
        """The cost read from Redis with the meta (and upstream seq of ``seq_field``) it
        belongs to; ``strict``: never from last-known-good (Redis down or not ready raise)."""
        read_at = _monotonic()
        try:
            version, ready_raw, epoch, raw, upstream = self.conn.script(
                "read_cost", self._cost_keys, [operation, new_epoch(), seq_field]
            )
        except StoreUnavailable:
            if strict:
                raise
            return self._cost_last_known(operation, start, degraded=True), _NO_META, 0
        meta = Meta.of(version, ready_raw, epoch)
        gen = self.near.observe(meta.epoch, meta.version, read_at, meta.ready)
        cost = parse_cost(raw) if raw is not None else None
        if raw is None and not meta.ready:
            self.on_not_ready()
            if strict:
                self._usable_age(None, False, f"the cost of {operation!r}")
            return self._cost_last_known(operation, start, degraded=False), _NO_META, 0
        token = version_token(meta.epoch, meta.version)
        if gen is not None and meta.ready:
            self.near.put(self.near.costs, sys.intern(operation), cost, gen, read_at, token)
        self.metrics.record(COSTS, True, _perf_ns() - start)
        answer = CreditCost(operation, cost, True, False, 0.0, "redis", token)
        return answer, meta, int(upstream or 0)

    def _cost_last_known(self, operation: str, start: int, *, degraded: bool) -> CreditCost:
        entry = self.near.costs.get(operation)
        try:
            age = self._usable_age(entry, degraded, f"the cost of {operation!r}")
        except (StoreUnavailable, TenantNotReady):
            self.metrics.record(COSTS, False, _perf_ns() - start, degraded=degraded, error=True)
            raise
        assert entry is not None
        self.metrics.record(COSTS, True, _perf_ns() - start, stale=True, degraded=degraded)
        return CreditCost(operation, entry[0], True, True, age, "last-known-good", entry[3])

    # --- permissions ---------------------------------------------------------------------------

    def check_permission(
        self, user_id: str, permission: str, consistency: Consistency = DEFAULT
    ) -> PermissionCheck:
        start = _perf_ns()
        if isinstance(consistency, MinimizeLatency):
            answer = self.near_permission(user_id, permission, start)
            if answer is not None:
                return answer
            return self._check_from_redis(user_id, permission, start)[0]
        return read_strong(
            consistency,
            self.near,
            lambda: self.near_permission(user_id, permission, start),
            lambda field: self._check_from_redis(user_id, permission, start, field, strict=True),
            self.wait_ms,
        )

    def near_permission(self, user_id: str, permission: str, start: int) -> PermissionCheck | None:
        """The near-cache's answer, or None when it cannot give one (no I/O)."""
        near = self.near
        entry = near.users.get(user_id)
        if entry is not None and self.serve_near:
            now = _monotonic()
            token = near.token
            floor = near.access_floor
            if entry[1] >= floor and now < near.trusted_until:
                decision = self._decide_cached(entry, permission, floor)
                if decision is not None:
                    age = (now - near.confirmed_at) * 1000.0
                    self.metrics.record_near_hit(PERMISSIONS, _perf_ns() - start)
                    return _check(user_id, permission, decision, False, age, "near-cache", token)
        return None

    def _decide_cached(self, user: Entry, permission: str, floor: int | None) -> Decision | None:
        """Decide from cached entries of generation ``floor`` or later (any generation when
        None); None when a needed role is not cached."""
        status, role_ids = user[0]
        roles = self.near.roles
        if status == ACTIVE:
            for role in role_ids or ():
                entry = roles.get(role)
                if entry is None or (floor is not None and entry[1] < floor):
                    return None

        def grants_of(role: str) -> Grants | None:
            entry = roles.get(role)
            return entry[0] if entry is not None else None

        return decide(status, role_ids, grants_of, permission, True)

    def _check_from_redis(
        self,
        user_id: str,
        permission: str,
        start: int,
        seq_field: str = "",
        *,
        strict: bool = False,
    ) -> tuple[PermissionCheck, Meta, int]:
        """As ``_credit_cost_from_redis``, for one permission check."""
        read_at = _monotonic()
        try:
            reply: list[Any] = self.conn.script(
                "read_access", self._access_keys, [user_id, new_epoch(), seq_field]
            )
        except StoreUnavailable:
            if strict:
                raise
            return self._check_last_known(user_id, permission, start, degraded=True), _NO_META, 0
        version, ready_raw, epoch, status_raw, roles_raw, upstream, *pairs = reply
        meta = Meta.of(version, ready_raw, epoch)
        gen = self.near.observe(meta.epoch, meta.version, read_at, meta.ready)
        status = parse_status(status_raw)
        role_ids = parse_role_ids(roles_raw)
        grants = {
            sys.intern(pairs[i].decode()): parse_grants(pairs[i + 1])
            for i in range(0, len(pairs), 2)
        }
        decision = decide(status, role_ids, grants.get, permission, meta.ready)
        if decision is Decision.UNKNOWN:
            self.on_not_ready()
            if strict:
                self._usable_age(None, False, f"the access of user {user_id!r}")
            answer = self._check_last_known(user_id, permission, start, degraded=False)
            return answer, _NO_META, 0
        token = version_token(meta.epoch, meta.version)
        if gen is not None and meta.ready:
            near = self.near
            near.put(near.users, user_id, (status, role_ids), gen, read_at, token)
            for role, role_grants in grants.items():
                near.put(near.roles, role, role_grants, gen, read_at, token)
        self.metrics.record(PERMISSIONS, True, _perf_ns() - start)
        answer = _check(user_id, permission, decision, False, 0.0, "redis", token)
        return answer, meta, int(upstream or 0)

    def _check_last_known(
        self, user_id: str, permission: str, start: int, *, degraded: bool
    ) -> PermissionCheck:
        user = self.near.users.get(user_id)
        decision = self._decide_cached(user, permission, None) if user is not None else None
        try:
            age = self._usable_age(
                user if decision is not None else None,
                degraded,
                f"the access of user {user_id!r}",
            )
            assert user is not None and decision is not None
            age = max(age, self._roles_age(user))
            if age > self.max_age_ms:
                raise StaleDataTooOld(
                    f"last-known-good access of {user_id!r} is {age:.0f} ms old", age
                )
        except (StoreUnavailable, TenantNotReady):
            self.metrics.record(
                PERMISSIONS, False, _perf_ns() - start, degraded=degraded, error=True
            )
            raise
        self.metrics.record(PERMISSIONS, True, _perf_ns() - start, stale=True, degraded=degraded)
        token = _common_token(user, [self.near.roles[role] for role in self._role_ids(user)])
        return _check(user_id, permission, decision, True, age, "last-known-good", token)

    def _roles_age(self, user: Entry) -> float:
        """The age of the oldest cached role an active user's answer rests on (0 for none)."""
        near, now = self.near, _monotonic()
        roles = self._role_ids(user)
        return max((near.age_ms(near.roles[role], now) for role in roles), default=0.0)

    @staticmethod
    def _role_ids(user: Entry) -> list[str]:
        """The roles an answer about a cached user rests on: an active user's (none otherwise)."""
        status, role_ids = user[0]
        return list(role_ids or ()) if status == ACTIVE else []

    # --- shared --------------------------------------------------------------------------------

    def _usable_age(self, entry: Entry | None, degraded: bool, what: str) -> float:
        """The age of a last-known-good entry, or the typed error when it cannot be used."""
        if entry is None:
            if degraded:
                raise StoreUnavailable(f"Redis unreachable and no last-known-good copy of {what}")
            raise TenantNotReady(
                f"tenant {self.tenant!r} is not loaded (never preloaded, or Redis lost it): "
                f"{what} is unknown"
            )
        age = self.near.age_ms(entry, _monotonic())
        if age > self.max_age_ms:
            raise StaleDataTooOld(f"last-known-good copy of {what} is {age:.0f} ms old", age)
        return age

    # --- warm-up and background work -------------------------------------------------------------

    def warm(self, max_fields: int) -> int:
        """Load every critical hash of at most ``max_fields`` fields, atomically with the
        version; returns the entries loaded (0 when the tenant is not ready)."""
        k = self.keys
        read_at = _monotonic()
        sizes = self.conn.hash_sizes([k.values(c) for c in WARM_CLASSES])
        small = [c for c, n in zip(WARM_CLASSES, sizes, strict=True) if n <= max_fields]
        meta, tables = self.conn.load_hashes(k.meta, new_epoch(), [k.values(c) for c in small])
        gen = self.near.observe(meta.epoch, meta.version, read_at, meta.ready)
        if gen is None or not meta.ready:
            return 0
        token = version_token(meta.epoch, meta.version)
        return self._fill(dict(zip(small, tables, strict=True)), gen, read_at, token)

    def _fill(
        self, loaded: dict[DataClass, dict[bytes, bytes]], gen: int, read_at: float, token: str
    ) -> int:
        near, count = self.near, 0
        for op, raw in loaded.get(DataClass.CREDIT_COSTS, {}).items():
            near.put(near.costs, sys.intern(op.decode()), parse_cost(raw), gen, read_at, token)
            count += 1
        for role, raw in loaded.get(DataClass.ROLES, {}).items():
            near.put(near.roles, sys.intern(role.decode()), parse_grants(raw), gen, read_at, token)
            count += 1
        if DataClass.USER_STATUS in loaded and DataClass.USER_ROLES in loaded:
            roles_of = loaded[DataClass.USER_ROLES]
            for user, status in loaded[DataClass.USER_STATUS].items():
                access = (parse_status(status), parse_role_ids(roles_of.get(user)))
                near.put(near.users, user.decode(), access, gen, read_at, token)
                count += 1
        return count

    def check_version(self) -> None:
        """Confirm (or advance) the near-cache's epoch and version: one round trip."""
        read_at = _monotonic()
        meta = self.conn.meta(self.keys.meta, new_epoch())
        self.near.observe(meta.epoch, meta.version, read_at, meta.ready)


def _common_token(user: Entry, roles: list[Entry]) -> str:
    """The token of a last-known-good answer: its entries' when they all share one, else ""."""
    tokens = {user[3], *(role[3] for role in roles)}
    return tokens.pop() if len(tokens) == 1 else ""
