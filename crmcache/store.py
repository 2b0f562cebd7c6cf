"""The write side of the cache: every Redis command the pipeline sends goes through ``Store``.

Key names and Lua sources come from ``keyspace``; redis-py errors are translated here into
``StoreUnavailable`` so that tasks and the subscriber retry on one exception type.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from crmcache import keyspace
from crmcache.errors import StoreUnavailable
from crmcache.events import Event, WritePlan, plan_writes
from crmcache.keyspace import DATA_CLASSES, META_EPOCH, META_READY, DataClass, TenantKeys
from crmcache.store_base import (
    async_lua_script,
    lua_script,
    now_ms,
    text,
    text_map,
    translate_errors,
)
from crmcache.store_ops import OpsCommands
from crmcache.store_outbox import OutboxCommands
from crmcache.tokens import version_token

__all__ = [
    "ApplyResult",
    "SnapshotStart",
    "Store",
    "async_lua_script",
    "lua_script",
    "now_ms",
    "translate_errors",
]

_CLASS_INDEX = {data_class: i + 1 for i, data_class in enumerate(DATA_CLASSES)}
_CLASS_NAMES = json.dumps([c.value for c in DATA_CLASSES])
SNAPSHOT_CHUNK = 500
APPLIED_BATCH_RECORD_MS = 30_000
"""How long apply_events.lua remembers a batch it ran; the subscriber looks once a second."""


TOMBSTONE_RETENTION_S = 7 * 86_400
"""How long a snapshot keeps a versioned tombstone at least (CRM_TOMBSTONE_RETENTION)."""


@dataclass(frozen=True)
class SnapshotStart:
    """Where a snapshot (preload) began: its start stamp S0 and the epoch of the data it is
    written into. Every write of the snapshot checks the epoch: when Redis lost its data since
    (restarted empty), S0 belongs to a counter that no longer exists, so nothing more is
    written and the tenant is not marked ready."""

    seq: int
    epoch: str


_EPOCH_LOST = "Redis lost its data while the snapshot of {tenant!r} was written (a new epoch)"


@dataclass(frozen=True)
class ApplyResult:
    written: int
    stale: int
    duplicates: int
    version: int
    rejected: tuple[tuple[Event, Exception], ...] = ()
    """Events left out because planning their writes raised (a bug of ours), with the error."""
    epoch: str = ""

    @property
    def token(self) -> str:
        """The consistency token of the tenant's data as this batch left it (crmcache/tokens.py)."""
        return version_token(self.epoch, self.version)


class Store(OutboxCommands, OpsCommands):
    """Versioned, idempotent writes to one Redis (or Cluster) holding the materialized cache;
    the outbox (``store_outbox``) and bookkeeping (``store_ops``) commands are mixed in."""

    # --- credits ----------------------------------------------------------------------------

    def run_credit_script(self, name: str, tenant: str, keys: list[str], args: list[Any]) -> Any:
        """Run a credit script (deductions, holds) and add the tenant to the settlement and
        reconciliation work list (``crm:credit-tenants``), in one round trip."""
        script = self.script(name)
        if isinstance(self.redis, RedisCluster):
            # A Cluster pipeline cannot carry EVALSHA, and CREDIT_TENANTS lives in another slot.
            with translate_errors():
                self.redis.sadd(keyspace.CREDIT_TENANTS, tenant)
                return script(keys, args)
        for _ in range(2):
            with translate_errors():
                pipe = self.redis.pipeline(transaction=False)
                pipe.sadd(keyspace.CREDIT_TENANTS, tenant)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                try:
                    return pipe.execute()[1]
                except redis.exceptions.NoScriptError:
                    self.redis.script_load(script.script)  # a restarted or flushed Redis
        raise RuntimeError(f"{name}.lua could not be loaded")

    def seed_balance(self, tenant: str, user_id: str, amount: str) -> bytes | str:
        """Cache `amount` unless a balance is cached already (SET NX: one maybe already
        charged is never overwritten); the cached balance after. One command (SET NX GET,
        Redis 7): a key that vanished between a SET NX and a GET can no longer answer None."""
        key = TenantKeys.of(tenant).balance(user_id)
        with translate_errors():
            before = self.redis.set(key, amount, nx=True, get=True)
        return amount if before is None else cast("bytes | str", before)

    def record(self, key: str) -> dict[str, str]:
        """A hash as text (an idempotency or hold record); empty when there is none."""
        with translate_errors():
            raw = self.redis.hgetall(key)
        return text_map(raw)

    def due_members(self, zset: str, limit: int) -> list[str]:
        """Members of `zset` whose score (a deadline in ms) is not after Redis's clock."""
        with translate_errors():
            seconds, micros = self.redis.time()
            now = seconds * 1000 + micros // 1000
            members = self.redis.zrangebyscore(zset, "-inf", now, start=0, num=limit)
        return [text(m) for m in members if isinstance(m, bytes | str)]

    def credit_tenants(self) -> list[str]:
        """Tenants that ever deducted or reserved (the settlement and reconciler work list)."""
        with translate_errors():
            members = self.redis.smembers(keyspace.CREDIT_TENANTS)
        return sorted(text(m) for m in members)

    def unschedule_settlement(self, tenant: str) -> None:
        """Clear the 'a settle task is queued' flag, so the next charge enqueues one."""
        with translate_errors():
            self.redis.delete(TenantKeys.of(tenant).settle_scheduled)

    def publish(self, channel: str, message: str) -> None:
        with translate_errors():
            self.redis.publish(channel, message)

    # --- events -----------------------------------------------------------------------------

    def reserve_stamps(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Reserve receipt stamps: one pipelined INCRBY per tenant, never one per event.

        Returns each tenant's first stamp; the tenant's events get first, first+1, ...
        """
        tenants = list(counts)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for tenant in tenants:
                pipe.incrby(TenantKeys.of(tenant).seq, counts[tenant])
            tops = pipe.execute()
        return {t: int(top) - counts[t] + 1 for t, top in zip(tenants, tops, strict=True)}

    def apply_events(
        self, tenant: str, events: Sequence[Event], *, dedupe_window_s: int = 86_400
    ) -> ApplyResult:
        """Apply one tenant's stamped events in one round trip (apply_events.lua).

        An event whose writes cannot be planned (a bug of ours) is left out and returned in
        ``rejected``: one poisoned event must not keep the rest of its batch from applying.
        """
        keys = TenantKeys.of(tenant)
        key_list = [keys.meta, keys.event_ids, *keys.class_keys()]
        batch: list[list[Any]] = []
        rejected: list[tuple[Event, Exception]] = []
        for event in events:
            try:
                plan = plan_writes(event)
            except Exception as exc:
                rejected.append((event, exc))
                continue
            batch.append(_batch_entry(keys, key_list, event, plan))
        key_list.append(keys.upstream_pending)  # the last two keys (apply_events.lua)
        key_list.append(keys.applied_batches)
        args: list[str | int] = [
            _CLASS_NAMES,
            json.dumps(batch),
            dedupe_window_s * 1000,
            keys.changes_channel,
            APPLIED_BATCH_RECORD_MS,
        ]
        with translate_errors():
            written, stale, duplicates, version, epoch = self.script("apply_events")(key_list, args)
        return ApplyResult(
            int(written),
            int(stale),
            int(duplicates),
            int(version),
            tuple(rejected),
            text(epoch),
        )

    def applied_batches(self, wanted: Mapping[str, Sequence[int]]) -> dict[str, set[int]]:
        """Which of these batches (tenant -> highest stamps) apply_events.lua recorded as run
        within the last APPLIED_BATCH_RECORD_MS: one pipelined ZMSCORE per tenant."""
        tenants = [t for t in wanted if wanted[t]]
        if not tenants:
            return {}
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for tenant in tenants:
                members = [str(top) for top in wanted[tenant]]
                pipe.zmscore(TenantKeys.of(tenant).applied_batches, members)
            replies = pipe.execute()
        found: dict[str, set[int]] = {}
        for tenant, scores in zip(tenants, replies, strict=True):
            tops = zip(wanted[tenant], scores, strict=True)
            found[tenant] = {top for top, score in tops if score is not None}
        return found

    # --- snapshots (preload / resync) ---------------------------------------------------------

    def begin_snapshot(self, tenant: str) -> SnapshotStart:
        """Take the snapshot's start stamp S0, before anything is asked of the Wrapper, with the
        epoch it belongs to (creating one when Redis has none yet, as the first reader does)."""
        keys = TenantKeys.of(tenant)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(keys.seq)
            pipe.hset(keys.meta, keyspace.META_PRELOAD_STARTED_MS, now_ms())
            pipe.hsetnx(keys.meta, META_EPOCH, f"s-{secrets.token_hex(8)}")
            pipe.hget(keys.meta, META_EPOCH)
            s0, _, _, epoch = pipe.execute()
        return SnapshotStart(int(s0), text(epoch))

    def write_snapshot(
        self,
        tenant: str,
        data_class: DataClass,
        s0: SnapshotStart,
        items: Iterable[tuple[str, str]],
        *,
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
    ) -> tuple[int, int]:
        """Write a whole snapshot of one class in chunks, then commit it.

        Returns (fields written, values removed); (-1, 0) when a newer snapshot won.
        """
        written = 0
        chunk: list[tuple[str, str]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= SNAPSHOT_CHUNK:
                written += max(self.write_snapshot_chunk(tenant, data_class, s0, chunk), 0)
                chunk = []
        if chunk:
            written += max(self.write_snapshot_chunk(tenant, data_class, s0, chunk), 0)
        removed = self.commit_snapshot(
            tenant, data_class, s0, tombstone_retention_s=tombstone_retention_s
        )
        return (-1, 0) if removed < 0 else (written, removed)

    def write_snapshot_chunk(
        self,
        tenant: str,
        data_class: DataClass,
        s0: SnapshotStart,
        chunk: Sequence[tuple[str, str]],
    ) -> int:
        """snapshot_chunk.lua: fields written, or -1 when a newer snapshot already committed;
        StoreUnavailable when Redis lost its data since the snapshot began."""
        keys = TenantKeys.of(tenant)
        key_list = [keys.meta, keys.values(data_class), keys.stamps(data_class)]
        flat = [part for pair in chunk for part in pair]
        args = [s0.seq, data_class.value, s0.epoch, *flat]
        with translate_errors():
            written = int(self.script("snapshot_chunk")(key_list, args))
        if written == -2:
            raise StoreUnavailable(_EPOCH_LOST.format(tenant=tenant))
        return written

    def commit_snapshot(
        self,
        tenant: str,
        data_class: DataClass,
        s0: SnapshotStart,
        *,
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
    ) -> int:
        """snapshot_commit.lua: values removed, or -1 when a newer snapshot already committed;
        StoreUnavailable when Redis lost its data since the snapshot began. Versioned
        tombstones older than the retention (at least, up to about twice it) go."""
        keys = TenantKeys.of(tenant)
        key_list = [keys.meta, keys.values(data_class), keys.stamps(data_class)]
        args = [s0.seq, data_class.value, s0.epoch, int(tombstone_retention_s * 1000)]
        with translate_errors():
            removed, _ = self.script("snapshot_commit")(key_list, args)
        if removed == -2:
            raise StoreUnavailable(_EPOCH_LOST.format(tenant=tenant))
        return int(removed)

    def mark_ready(self, tenant: str, s0: SnapshotStart) -> int:
        """Mark the tenant's critical data loaded and tell readers to revalidate (mark_ready.lua);
        StoreUnavailable when Redis lost its data since the snapshot began."""
        keys = TenantKeys.of(tenant)
        with translate_errors():
            version = int(
                self.script("mark_ready")([keys.meta], [s0.epoch, now_ms(), keys.changes_channel])
            )
        if version < 0:
            raise StoreUnavailable(_EPOCH_LOST.format(tenant=tenant))
        return version

    # --- metadata ---------------------------------------------------------------------------

    def tenant_meta(self, tenant: str) -> dict[str, str]:
        with translate_errors():
            raw = self.redis.hgetall(TenantKeys.of(tenant).meta)
        return text_map(raw)

    def is_ready(self, tenant: str) -> bool:
        with translate_errors():
            return self.redis.hget(TenantKeys.of(tenant).meta, META_READY) == keyspace.READY_FLAG

    # --- leases (the active subscriber) ------------------------------------------------------

    def acquire_lease(self, key: str, token: str, ttl_ms: int) -> bool:
        with translate_errors():
            return bool(self.redis.set(key, token, nx=True, px=ttl_ms))

    def renew_lease(self, key: str, token: str, ttl_ms: int) -> bool:
        with translate_errors():
            return bool(self.script("lease_renew")([key], [token, ttl_ms]))

    def release_lease(self, key: str, token: str) -> bool:
        with translate_errors():
            return bool(self.script("lease_release")([key], [token]))

    def lease_holder(self, key: str) -> str | None:
        with translate_errors():
            holder = self.redis.get(key)
        return text(holder) if holder else None


def _batch_entry(keys: TenantKeys, key_list: list[str], event: Event, plan: WritePlan) -> list[Any]:
    """One event's entry of apply_events.lua's batch; the keys it touches go onto ``key_list``
    (the script refers to them by index)."""
    writes = [
        [_CLASS_INDEX[w.data_class], w.field, False if w.value is None else w.value]
        for w in plan.writes
    ]
    invalidations = []
    for kind, entity in plan.invalidate:
        for key in (keys.ref(kind, entity), keys.lease(kind, entity)):
            key_list.append(key)
            invalidations.append(len(key_list))
    deltas = []
    for user, delta in plan.credit_deltas:
        key_list.append(keys.balance(user))
        deltas.append([len(key_list), delta])
    event_id = event.event_id or ""
    if deltas and not event_id:
        event_id = f"#{event.seq}"  # a delta must not be added twice on redelivery
    version = event.version if event.version is not None else -1
    stamp = f"{event.seq}:{event.version}" if event.version is not None else str(event.seq)
    entry = [stamp, event.seq, version, event_id, writes, invalidations, deltas]
    if event.upstream_seq is not None:
        entry += [event.stream, event.upstream_seq, event.upstream_prev or -1]
    return entry
