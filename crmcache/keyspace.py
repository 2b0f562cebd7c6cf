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
from dataclasses import dataclass
from functools import cache
from importlib import resources

from crmcache.tenancy import is_valid_tenant, validate_tenant

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

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def event_ids(self) -> str:
        return f"{self.prefix}:event-ids"

    @property
    def upstream_pending(self) -> str:
        """``<stream>:<prev>`` -> upstream seq of an event applied before the event it follows
        on its stream (apply_events.lua advances ``upstream-seq:<stream>`` through them)."""
        return f"{self.prefix}:upstream-pending"

    @property
    def applied_batches(self) -> str:
        """Recently applied batches, by their highest receipt stamp (apply_events.lua)."""
        return f"{self.prefix}:applied-batches"

    @property
    def changes_channel(self) -> str:
        return f"{CHANNEL_PREFIX}{self.tenant}{CHANGES_SUFFIX}"

    @property
    def metrics_channel(self) -> str:
        return f"{CHANNEL_PREFIX}{self.tenant}:metrics"

    def channel(self, stream: str) -> str:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        return f"{CHANNEL_PREFIX}{self.tenant}:{stream}"

    def ref(self, kind: RefKind, entity_id: str) -> str:
        return f"{self.prefix}:ref:{kind.value}:{entity_id}"

    def lease(self, kind: RefKind, entity_id: str) -> str:
        return f"{self.prefix}:lease:{kind.value}:{entity_id}"

    def balance(self, user_id: str) -> str:
        """The user's available credits, as cached: read through from the Wrapper once, then
        kept by deductions (deduct_credits.lua) and top-up events (user-credits-changed)."""
        return f"{self.prefix}:balance:{user_id}"

    @property
    def metrics(self) -> str:
        """Readers' cumulative counters and latency buckets for this tenant."""
        return f"{self.prefix}:metrics"

    @property
    def metrics_snapshot(self) -> str:
        return f"{self.prefix}:metrics:snapshot"

    @property
    def preload_request(self) -> str:
        return f"{self.prefix}:preload-request"

    def idempotency(self, key: str) -> str:
        """The idempotency record of one client-chosen key (see credits.validate_key)."""
        return f"{self.prefix}:idempotency:{key}"

    def hold(self, hold_id: str) -> str:
        """One reservation's record (see lua/credit_holds.lua)."""
        return f"{self.prefix}:hold:{hold_id}"

    def holds(self, user_id: str) -> str:
        """The user's open holds: holdId -> JSON; the amounts sum to what is held."""
        return f"{self.prefix}:holds:{user_id}"

    def hold_deadlines(self, user_id: str) -> str:
        return f"{self.prefix}:hold-deadlines:{user_id}"

    @property
    def hold_users(self) -> str:
        """Users with open holds -> their earliest deadline: the reconciler's work list."""
        return f"{self.prefix}:hold-users"

    @property
    def credits_low_channel(self) -> str:
        return f"{CHANNEL_PREFIX}{self.tenant}:credits-low"

    @property
    def credit_outbox(self) -> str:
        return f"{self.prefix}:credit-outbox"

    @property
    def settle_scheduled(self) -> str:
        return f"{self.prefix}:settle-scheduled"

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


@cache
def lua_source(name: str) -> str:
    """The text of ``crmcache/lua/<name>.lua``."""
    return resources.files("crmcache").joinpath("lua", f"{name}.lua").read_text("utf-8")
