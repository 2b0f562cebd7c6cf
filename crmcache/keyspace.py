"""The keyspace: every Redis key and channel name crmcache uses, and its Lua scripts.

This is a public contract (other services may read these keys; the README documents them).
No other module builds a key string. Every per-tenant key carries the hash tag ``{tenant}`` so
that one tenant's keys live in one Redis Cluster slot and multi-key Lua scripts stay legal.

Per-tenant keys (``P = crm:{tenant}``):

=============================  ======  ==============================================
key                            type    holds
=============================  ======  ==============================================
P:credit-costs                 hash    operationCode -> cost (JSON number; 0 is a cost)
P:roles                        hash    roleId -> JSON list of permissions
P:user-status                  hash    userId -> status ("active", "suspended", ...)
P:user-roles                   hash    userId -> JSON list of roleIds
P:configs                      hash    configId -> JSON config
P:stamps:<class>               hash    field -> the stamp of its last write: "seq" (an
                                       unversioned write), "seq:version" (an event with an
                                       upstream version) or "seq:version+" (written or
                                       confirmed by the snapshot begun at seq: the entity
                                       is at that version or later); a stamp without a
                                       value is a tombstone (versioned ones are kept for
                                       CRM_TOMBSTONE_RETENTION, see snapshot_commit.lua)
P:meta                         hash    ready, version, last-event-ms, last-preload-ms,
                                       preload-started-ms, floor:<class>,
                                       tombstone-mark:<class> ("seq:ms" of the commit that
                                       began the current tombstone retention period),
                                       epoch (random, set by the first reader or preload: a
                                       new one means Redis lost the data, so versions
                                       restarted)
P:seq                          string  per-tenant receipt sequence (INCRBY by the subscriber)
P:event-ids                    zset    eventId -> applied-at ms (dedupe window)
P:applied-batches              zset    highest stamp of each applied batch -> applied-at
                                       ms, for 30 s: the subscriber re-sends a batch it
                                       does not see here (consumer/ingest/inflight.py)
P:ref:profile:<userId>         hash    read-through entry: value (JSON), fetched-ms,
                                       expires-ms; kept past expires-ms (key TTL) only
                                       for stale-if-error; a cached 404 has not-found=1
                                       and no value
P:ref:hierarchy:<entityId>     hash    the same, for a hierarchy node
P:ref:credits:<userId>         hash    a cached 404 of the user's credits (the balance
                                       itself is P:balance)
P:lease:<kind>:<id>            string  read-through lease token (one upstream fetch per key);
                                       "!<token>" for a short while after a failed fetch
P:metrics                      hash    readers' cumulative counters and latency histogram
                                       buckets (HINCRBY by each reader's background flush)
P:metrics:snapshot             string  the last snapshot publish_metrics published (JSON)
P:preload-request              string  SET NX PX: a reader of a not-ready tenant asks for
                                       one preload per interval
P:balance:<userId>             string  available credits (decimal text), no TTL
P:idempotency:<key>            hash    a deduction's or reservation's idempotency record
                                       (fingerprint, deductionId or holdId, amount, ...), 24 h
P:hold:<holdId>                hash    a reservation: userId, operationCode, amount, state
                                       (held, committed, voided, expired), deadlineMs,
                                       resultRef, deductionId; 24 h TTL once closed
P:holds:<userId>               hash    the user's open holds: holdId -> JSON (amount,
                                       deadline, operation, key, ref); held = their sum
P:hold-deadlines:<userId>      zset    the user's open holds -> deadline ms (Redis clock)
P:hold-users                   zset    users with open holds -> their earliest deadline
                                       (the reconciler's work list)
P:credit-outbox                stream  deductions not yet acknowledged by the Wrapper;
                                       consumer group ``settlers``; XDEL after the ack
P:settle-scheduled             string  set while a settle_credits task is queued (coalescing)
=============================  ======  ==============================================

Channels: ``crm:<tenant>:<stream>`` (input from the Wrapper, see ``STREAMS``),
``crm:<tenant>:changes`` (published by the workers after every applied batch: the near-cache's
coherence signal) and ``crm:<tenant>:credits-low`` (a user's available balance crossed below
the tenant's threshold).

Global keys: ``crm:dead-letters`` (stream of rejected messages), ``crm:dead-letters:count``,
``crm:subscriber:leader`` (the active subscriber's lease), ``crm:schedule:<job>``
(beat run guards), ``crm:credit-tenants`` (set of tenants that ever deducted credits: the
settlement sweep's work list), ``crm:metrics:tenants`` (set of tenants whose readers flushed
metrics: publish_metrics' work list).

Preload runs (one hash tag, so they share a Cluster slot): ``crm:{preload}:run`` (hash: the
latest run of many tenants: id, total, done, failed, retried, started-ms, finished-ms),
``crm:{preload}:failed`` (hash: tenant -> why its preload failed in that run), and
``crm:{preload}:slots`` (zset: holder -> lease expiry ms; at most CRM_PRELOAD_CONCURRENCY
preloads ask the Wrapper at once across all workers).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Generic, Self, TypeVar, overload

from crmcache.tenancy import is_valid_tenant, validate_tenant

T = TypeVar("T")

STREAMS = ("credit-configs", "roles", "users", "hierarchy", "configs")
"""Input streams: the Wrapper publishes on ``crm:<tenant>:<stream>``."""

CHANNEL_PREFIX = "crm:"
DEAD_LETTERS = "crm:dead-letters"
DEAD_LETTER_COUNT = "crm:dead-letters:count"
LEADER = "crm:subscriber:leader"
CREDIT_TENANTS = "crm:credit-tenants"
METRICS_TENANTS = "crm:metrics:tenants"
PRELOAD_RUN = "crm:{preload}:run"
PRELOAD_FAILED = "crm:{preload}:failed"
PRELOAD_SLOTS = "crm:{preload}:slots"
OUTBOX_GROUP = "settlers"
"""The consumer group of every tenant's credit outbox stream."""

# Fields of a tenant's meta hash (``TenantKeys.meta``), and of a reference entry.
META_READY = "ready"
""""1" once the tenant's critical data was loaded (a preload marked it)."""
META_VERSION = "version"
"""Bumped by every applied change (and charge); readers confirm their near-cache against it."""
META_EPOCH = "epoch"
"""Random, set by the first reader or preload; a new one means Redis lost the data."""
META_LAST_EVENT_MS = "last-event-ms"
META_LAST_PRELOAD_MS = "last-preload-ms"
META_PRELOAD_STARTED_MS = "preload-started-ms"
META_UPSTREAM_SEQ_PREFIX = "upstream-seq:"
"""``upstream-seq:<stream>``: the highest upstream ``seq`` of that input stream up to which every
event was applied (what a ``<stream>:<seq>`` consistency token is checked against)."""
READY_FLAG = b"1"
"""``META_READY``'s value, as Redis returns it."""
REF_EXPIRES_MS = "expires-ms"
"""Field of a reference entry (``TenantKeys.ref``): when it stops being fresh, epoch ms."""


class DataClass(enum.StrEnum):
    """A versioned critical-data hash. The order is the order of KEYS in apply_events.lua."""

    CREDIT_COSTS = "credit-costs"
    ROLES = "roles"
    USER_STATUS = "user-status"
    USER_ROLES = "user-roles"
    CONFIGS = "configs"


DATA_CLASSES: tuple[DataClass, ...] = tuple(DataClass)


class RefKind(enum.StrEnum):
    """A kind of read-through reference entry."""

    PROFILE = "profile"
    HIERARCHY = "hierarchy"
    CREDITS = "credits"


def input_patterns(tenants: tuple[str, ...] = ()) -> list[str]:
    """Channel patterns the subscriber listens to: every tenant, or just the ones given."""
    if tenants:
        return [f"{CHANNEL_PREFIX}{validate_tenant(t)}:{s}" for t in tenants for s in STREAMS]
    return [f"{CHANNEL_PREFIX}*:{s}" for s in STREAMS]


CHANGES_SUFFIX = ":changes"
CHANGES_PATTERN = f"{CHANNEL_PREFIX}*{CHANGES_SUFFIX}"
"""PSUBSCRIBE pattern of every tenant's change notifications (``TenantKeys.changes_channel``):
what a reader process serving many tenants listens to, on one connection."""


def tenant_of_changes_channel(channel: str) -> str | None:
    """The tenant whose change notifications ``channel`` carries, or None (another shape)."""
    if not (channel.startswith(CHANNEL_PREFIX) and channel.endswith(CHANGES_SUFFIX)):
        return None
    tenant = channel[len(CHANNEL_PREFIX) : -len(CHANGES_SUFFIX)]
    return tenant if is_valid_tenant(tenant) else None


TENANT_META_PATTERN = "crm:{*}:meta"
"""SCAN MATCH pattern of every tenant's meta hash: how ``crmcache status`` finds tenants."""


def tenant_of_meta_key(key: str) -> str | None:
    """The tenant whose meta hash `key` is, or None (a SCAN match of another shape)."""
    prefix, suffix = "crm:{", "}:meta"
    if not (key.startswith(prefix) and key.endswith(suffix)):
        return None
    tenant = key[len(prefix) : -len(suffix)]
    return tenant if is_valid_tenant(tenant) else None


def schedule_guard(job: str) -> str:
    """The SET NX EX key that lets only one beat's run of `job` do the work."""
    return f"crm:schedule:{job}"


class _Named(Generic[T]):
    """A name of one tenant's (its key or channel) read as an attribute of ``TenantKeys``;
    built on first use, then kept in the instance (one per tenant: ``TenantKeys.of``)."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.attribute = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = name

    def of(self, keys: TenantKeys) -> T:
        raise NotImplementedError

    @overload
    def __get__(self, keys: None, owner: type) -> Self: ...
    @overload
    def __get__(self, keys: TenantKeys, owner: type) -> T: ...
    def __get__(self, keys: TenantKeys | None, owner: type) -> Self | T:
        if keys is None:
            return self
        value = keys.__dict__[self.attribute] = self.of(keys)  # frozen: not through setattr
        return value


class _Key(_Named[str]):
    """``crm:{tenant}:<suffix>``."""

    def of(self, keys: TenantKeys) -> str:
        return f"{keys.prefix}:{self.suffix}"


class _KeyOf(_Named[Callable[[str], str]]):
    """One key per entity, ``crm:{tenant}:<suffix>:<id>``: ``keys.balance(user_id)``."""

    def of(self, keys: TenantKeys) -> Callable[[str], str]:
        prefix = f"{keys.prefix}:{self.suffix}:"
        return lambda entity_id: prefix + entity_id


class _Channel(_Named[str]):
    """A pub/sub channel, ``crm:<tenant>:<suffix>`` (no hash tag)."""

    def of(self, keys: TenantKeys) -> str:
        return f"{CHANNEL_PREFIX}{keys.tenant}:{self.suffix}"


@dataclass(frozen=True)
class TenantKeys:
    """Every key of one tenant. Build with ``TenantKeys.of(tenant)``; the id is validated."""

    tenant: str
    prefix: str

    @classmethod
    def of(cls, tenant: str) -> TenantKeys:
        return _tenant_keys(validate_tenant(tenant))

    def values(self, data_class: DataClass) -> str:
        return f"{self.prefix}:{data_class.value}"

    def stamps(self, data_class: DataClass) -> str:
        return f"{self.prefix}:stamps:{data_class.value}"

    meta = _Key("meta")
    seq = _Key("seq")
    event_ids = _Key("event-ids")
    upstream_pending = _Key("upstream-pending")
    """``<stream>:<prev>`` -> upstream seq of an event applied before the event it follows
    on its stream (apply_events.lua advances ``upstream-seq:<stream>`` through them)."""
    applied_batches = _Key("applied-batches")
    """Recently applied batches, by their highest receipt stamp (apply_events.lua)."""
    changes_channel = _Channel(CHANGES_SUFFIX[1:])
    metrics_channel = _Channel("metrics")
    credits_low_channel = _Channel("credits-low")

    def channel(self, stream: str) -> str:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        return f"{CHANNEL_PREFIX}{self.tenant}:{stream}"

    def ref(self, kind: RefKind, entity_id: str) -> str:
        return f"{self.prefix}:ref:{kind.value}:{entity_id}"

    def lease(self, kind: RefKind, entity_id: str) -> str:
        return f"{self.prefix}:lease:{kind.value}:{entity_id}"

    balance = _KeyOf("balance")
    """The user's available credits, as cached: read through from the Wrapper once, then
    kept by deductions (deduct_credits.lua) and top-up events (user-credits-changed)."""
    metrics = _Key("metrics")
    """Readers' cumulative counters and latency buckets for this tenant."""
    metrics_snapshot = _Key("metrics:snapshot")
    preload_request = _Key("preload-request")
    idempotency = _KeyOf("idempotency")
    """The idempotency record of one client-chosen key (see credits.validate_key)."""
    hold = _KeyOf("hold")
    """One reservation's record (see lua/credit_holds.lua)."""
    holds = _KeyOf("holds")
    """The user's open holds: holdId -> JSON; the amounts sum to what is held."""
    hold_deadlines = _KeyOf("hold-deadlines")
    hold_users = _Key("hold-users")
    """Users with open holds -> their earliest deadline: the reconciler's work list."""
    credit_outbox = _Key("credit-outbox")
    settle_scheduled = _Key("settle-scheduled")

    def ref_pattern(self, kind: RefKind) -> str:
        """SCAN MATCH pattern of this tenant's reference entries of one kind."""
        return f"{self.prefix}:ref:{kind.value}:*"

    @property
    def balance_pattern(self) -> str:
        """SCAN MATCH pattern of this tenant's cached balances."""
        return f"{self.prefix}:balance:*"

    def class_keys(self) -> list[str]:
        """values/stamps pairs of every data class, in ``DATA_CLASSES`` order."""
        keys: list[str] = []
        for data_class in DATA_CLASSES:
            keys += [self.values(data_class), self.stamps(data_class)]
        return keys


@cache
def _tenant_keys(tenant: str) -> TenantKeys:
    return TenantKeys(tenant=tenant, prefix=f"crm:{{{tenant}}}")


def parse_input_channel(channel: str) -> tuple[str, str]:
    """Split ``crm:<tenant>:<stream>`` into (tenant, stream) without validating the tenant."""
    if not channel.startswith(CHANNEL_PREFIX):
        raise ValueError(f"not a crm channel: {channel!r}")
    rest = channel[len(CHANNEL_PREFIX) :]
    tenant, sep, stream = rest.rpartition(":")
    if not sep:
        raise ValueError(f"channel without a stream: {channel!r}")
    return tenant, stream


_LUA_INCLUDE = re.compile(r"^--@include ([a-z_]+)$", re.MULTILINE)


@cache
def lua_source(name: str) -> str:
    """The text of ``crmcache/lua/<name>.lua``, each ``--@include <lib>`` line replaced by
    ``crmcache/lua/lib/<lib>.lua`` (Redis runs one self-contained script; the scripts that do
    the same step share its function instead of a copy)."""
    lua = resources.files("crmcache").joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_text("utf-8")
    return _LUA_INCLUDE.sub(lambda m: lua.joinpath("lib", f"{m[1]}.lua").read_text("utf-8"), source)
