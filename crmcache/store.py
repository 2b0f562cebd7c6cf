"""The write side of the cache: every Redis command the pipeline sends goes through ``Store``.

Key names and Lua sources come from ``keyspace``; redis-py errors are translated here into
``StoreUnavailable`` so that tasks and the subscriber retry on one exception type.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from crmcache import keyspace
from crmcache.errors import StoreUnavailable
from crmcache.events import Event, plan_writes
from crmcache.keyspace import DATA_CLASSES, DataClass, TenantKeys

_CLASS_INDEX = {data_class: i + 1 for i, data_class in enumerate(DATA_CLASSES)}
_CLASS_NAMES = json.dumps([c.value for c in DATA_CLASSES])
SNAPSHOT_CHUNK = 500
TOMBSTONE_RETENTION_S = 7 * 86_400
"""How long a snapshot keeps a versioned tombstone at least (CRM_TOMBSTONE_RETENTION)."""


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py's connection failures into the project's StoreUnavailable."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unavailable: {exc}") from None


@dataclass(frozen=True)
class ApplyResult:
    written: int
    stale: int
    duplicates: int
    version: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """Versioned, idempotent writes to one Redis (or Cluster) holding the materialized cache."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._scripts: dict[str, Script] = {}

    def script(self, name: str) -> Script:
        """The registered Lua script ``crmcache/lua/<name>.lua`` (EVALSHA, EVAL on NOSCRIPT)."""
        script = self._scripts.get(name)
        if script is None:
            script = self.redis.register_script(keyspace.lua_source(name))
            self._scripts[name] = script
        return script

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
        """Apply one tenant's stamped events in one round trip (apply_events.lua)."""
        keys = TenantKeys.of(tenant)
        key_list = [keys.meta, keys.event_ids, *keys.class_keys()]
        batch: list[list[Any]] = []
        for event in events:
            plan = plan_writes(event)
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
            batch.append([stamp, event.seq, version, event_id, writes, invalidations, deltas])
        args: list[str | int] = [
            _CLASS_NAMES,
            json.dumps(batch),
            dedupe_window_s * 1000,
            keys.changes_channel,
        ]
        with translate_errors():
            written, stale, duplicates, version = self.script("apply_events")(key_list, args)
        return ApplyResult(int(written), int(stale), int(duplicates), int(version))

    # --- snapshots (preload / resync) ---------------------------------------------------------

    def begin_snapshot(self, tenant: str) -> int:
        """Take the snapshot's start stamp S0, before anything is asked of the Wrapper."""
        keys = TenantKeys.of(tenant)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(keys.seq)
            pipe.hset(keys.meta, "preload-started-ms", now_ms())
            s0, _ = pipe.execute()
        return int(s0)

    def write_snapshot(
        self,
        tenant: str,
        data_class: DataClass,
        s0: int,
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
        self, tenant: str, data_class: DataClass, s0: int, chunk: Sequence[tuple[str, str]]
    ) -> int:
        """snapshot_chunk.lua: fields written, or -1 when a newer snapshot already committed."""
        keys = TenantKeys.of(tenant)
        key_list = [keys.meta, keys.values(data_class), keys.stamps(data_class)]
        flat = [part for pair in chunk for part in pair]
        with translate_errors():
            return int(self.script("snapshot_chunk")(key_list, [s0, data_class.value, *flat]))

    def commit_snapshot(
        self,
        tenant: str,
        data_class: DataClass,
        s0: int,
        *,
        tombstone_retention_s: float = TOMBSTONE_RETENTION_S,
    ) -> int:
        """snapshot_commit.lua: values removed, or -1 when a newer snapshot already committed.

        Versioned tombstones older than the retention (at least, up to about twice it) go.
        """
        keys = TenantKeys.of(tenant)
        key_list = [keys.meta, keys.values(data_class), keys.stamps(data_class)]
        args = [s0, data_class.value, int(tombstone_retention_s * 1000)]
        with translate_errors():
            removed, _ = self.script("snapshot_commit")(key_list, args)
        return int(removed)

    def mark_ready(self, tenant: str) -> int:
        """Mark the tenant's critical data loaded and tell readers to revalidate."""
        keys = TenantKeys.of(tenant)
        with translate_errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(keys.meta, mapping={"ready": 1, "last-preload-ms": now_ms()})
            pipe.hincrby(keys.meta, "version", 1)
            _, version = pipe.execute()
            self.redis.publish(keys.changes_channel, json.dumps({"version": version}))
        return int(version)

    # --- metadata, guards, dead letters ------------------------------------------------------

    def tenant_meta(self, tenant: str) -> dict[str, str]:
        with translate_errors():
            raw = self.redis.hgetall(TenantKeys.of(tenant).meta)
        return {_text(k): _text(v) for k, v in raw.items()}

    def is_ready(self, tenant: str) -> bool:
        with translate_errors():
            return self.redis.hget(TenantKeys.of(tenant).meta, "ready") == b"1"

    def claim_run(self, job: str, ttl_s: int) -> bool:
        """True for the first caller of `job` within `ttl_s` seconds: a beat guard (SET NX EX),
        so that a second beat (two replicas, a restart) does nothing extra."""
        with translate_errors():
            return bool(self.redis.set(keyspace.schedule_guard(job), now_ms(), nx=True, ex=ttl_s))

    def dead_letter(
        self,
        reason: str,
        raw: bytes | str,
        *,
        channel: str = "",
        tenant: str | None = None,
        maxlen: int = 100_000,
    ) -> None:
        """Keep a rejected message with its reason (bounded stream), and count it."""
        raw_bytes = raw.encode() if isinstance(raw, str) else raw
        entry = {
            "reason": reason[:1000],
            "channel": channel[:300],
            "tenant": tenant or "",
            "size": len(raw_bytes),
            "raw": raw_bytes[: 1024 * 1024],
            "at-ms": now_ms(),
        }
        with translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(keyspace.DEAD_LETTERS, entry, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.incr(keyspace.DEAD_LETTER_COUNT)
            pipe.execute()

    def dead_letter_count(self) -> int:
        with translate_errors():
            return int(self.redis.get(keyspace.DEAD_LETTER_COUNT) or 0)

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
        return _text(holder) if holder else None
