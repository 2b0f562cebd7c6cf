"""Read-only views of the cache for operators: ``crmcache status`` and ``crmcache inspect``.

Every key name comes from ``keyspace``. Each function returns plain JSON-ready data; the
commands render it as tables or print it as JSON.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from crmcache import keyspace
from crmcache.keyspace import (
    DATA_CLASSES,
    META_LAST_EVENT_MS,
    META_LAST_PRELOAD_MS,
    META_READY,
    META_VERSION,
    RefKind,
    TenantKeys,
)
from crmcache.store_base import text, text_map, translate_errors

if TYPE_CHECKING:
    import redis

HIT_RATE_FIELDS = ("criticalHitRate", "referenceHitRate", "overallHitRate", "totalRequests")


def _number(value: Any) -> int | None:
    try:
        return int(float(text(value)))
    except (TypeError, ValueError):
        return None


def decode_value(raw: Any) -> Any:
    """A cached value as JSON when it is JSON (costs, permission lists), else as text."""
    shown = text(raw, "replace")
    try:
        return json.loads(shown)
    except ValueError:
        return shown


@translate_errors()
def known_tenants(client: redis.Redis, settings: Settings) -> list[str]:
    """CRM_TENANTS, else every tenant that has a meta hash in the cache."""
    if settings.tenants:
        return list(settings.tenants)
    found = set()
    for key in client.scan_iter(match=keyspace.TENANT_META_PATTERN, count=1000):
        tenant = keyspace.tenant_of_meta_key(text(key))
        if tenant:
            found.add(tenant)
    return sorted(found)


@translate_errors()
def tenant_status(client: redis.Redis, tenant: str) -> dict[str, Any]:
    """Readiness, entries per data class, last event/preload times, hit rates (if published)."""
    keys = TenantKeys.of(tenant)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.meta)
    for data_class in DATA_CLASSES:
        pipe.hlen(keys.values(data_class))
    pipe.get(keys.metrics_snapshot)
    meta_raw, *counts, snapshot_raw = pipe.execute()
    meta = text_map(meta_raw)
    return {
        "tenant": tenant,
        "ready": meta.get(META_READY) == "1",
        "version": _number(meta.get(META_VERSION)),
        "entries": {dc.value: int(n) for dc, n in zip(DATA_CLASSES, counts, strict=True)},
        "lastEventMs": _number(meta.get(META_LAST_EVENT_MS)),
        "lastPreloadMs": _number(meta.get(META_LAST_PRELOAD_MS)),
        "hitRates": _hit_rates(snapshot_raw),
    }


def _hit_rates(raw: Any) -> dict[str, Any] | None:
    """Hit rates from publish_metrics' last snapshot: over its window and since counting began."""
    if raw is None:
        return None
    try:
        snapshot = json.loads(text(raw))
    except ValueError:
        return None
    if not isinstance(snapshot, dict):
        return None
    rates: dict[str, Any] = {}
    for part in ("window", "totals"):
        summary = snapshot.get(part)
        if isinstance(summary, dict):
            rates[part] = {name: summary.get(name) for name in HIT_RATE_FIELDS}
    if not rates:  # a flat snapshot: the rates at top level
        rates["totals"] = {name: snapshot.get(name) for name in HIT_RATE_FIELDS}
    rates["atMs"] = snapshot.get("atMs")
    rates["threshold"] = snapshot.get("threshold")
    return rates


@translate_errors()
def dead_letter_summary(client: redis.Redis) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keyspace.DEAD_LETTERS)
    pipe.get(keyspace.DEAD_LETTER_COUNT)
    pending, total = pipe.execute()
    return {"stored": int(pending), "total": _number(total) or 0}


@translate_errors()
def active_subscriber(client: redis.Redis) -> dict[str, Any]:
    holder = client.get(keyspace.LEADER)
    ttl_ms = client.pttl(keyspace.LEADER) if holder else None
    return {"active": text(holder) if holder else None, "leaseTtlMs": ttl_ms}


def worker_names(settings: Settings, timeout: float) -> list[str] | None:
    """Celery workers that answer a ping within `timeout`; None when the broker is unreachable."""
    from celery import Celery

    from config.celery import celery_config

    app = Celery("crmcache-status")
    app.conf.update(celery_config(settings))
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.inspect(timeout=timeout).ping() or {}
    except Exception:  # kombu raises many kinds of connection errors
        return None
    finally:
        app.close()
    return sorted(replies)


def stack_status(
    client: redis.Redis, settings: Settings, tenants: list[str], ping_timeout: float
) -> dict[str, Any]:
    workers = worker_names(settings, ping_timeout) if ping_timeout > 0 else None
    return {
        "tenants": [tenant_status(client, t) for t in tenants],
        "deadLetters": dead_letter_summary(client),
        "subscriber": active_subscriber(client),
        "workers": {"count": len(workers) if workers is not None else None, "names": workers},
    }


@translate_errors()
def watch_sample(client: redis.Redis, tenants: list[str]) -> dict[str, Any]:
    """What ``status --watch`` shows, read in one round trip: per tenant readiness, last event,
    the receipt sequence (events received: its growth is the event rate), readers' counters
    and the oldest unsettled deduction; dead letters and the active subscriber."""
    pipe = client.pipeline(transaction=False)
    for tenant in tenants:
        keys = TenantKeys.of(tenant)
        pipe.hmget(keys.meta, [META_READY, META_LAST_EVENT_MS])
        pipe.get(keys.seq)
        pipe.hgetall(keys.metrics)
        pipe.xrange(keys.credit_outbox, count=1)
        pipe.xlen(keys.credit_outbox)
    pipe.xlen(keyspace.DEAD_LETTERS)
    pipe.get(keyspace.DEAD_LETTER_COUNT)
    pipe.get(keyspace.LEADER)
    replies = pipe.execute()
    *per_tenant, stored, total, leader = replies
    sample: dict[str, Any] = {"tenants": {}}
    for index, tenant in enumerate(tenants):
        meta, seq, counters, oldest, outbox = per_tenant[index * 5 : index * 5 + 5]
        sample["tenants"][tenant] = {
            "ready": text(meta[0]) == "1" if meta[0] is not None else False,
            "lastEventMs": _number(meta[1]),
            "received": _number(seq) or 0,
            "counters": {text(k): _number(v) or 0 for k, v in counters.items()},
            "outbox": int(outbox),
            "oldestUnsettledMs": _number(text(oldest[0][0]).split("-")[0]) if oldest else None,
        }
    sample["deadLetters"] = {"stored": int(stored), "total": _number(total) or 0}
    sample["subscriber"] = text(leader) if leader else None
    return sample


# --- inspect -----------------------------------------------------------------------------------


@translate_errors()
def tenant_contents(client: redis.Redis, tenant: str, limit: int) -> dict[str, Any]:
    """Everything cached for `tenant`: critical data with stamps and tombstones, metadata,
    reference entries with their TTLs, balances, and credit bookkeeping counts."""
    keys = TenantKeys.of(tenant)
    meta = text_map(client.hgetall(keys.meta))
    classes = {dc.value: _class_contents(client, keys, dc, limit) for dc in DATA_CLASSES}
    for name, contents in classes.items():
        # Fields without a stamp were written by a snapshot at or below this sequence.
        contents["floor"] = _number(meta.get(f"floor:{name}"))
    refs = {kind.value: _refs(client, keys, kind, limit) for kind in RefKind}
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.seq)
    pipe.zcard(keys.event_ids)
    pipe.zcard(keys.hold_users)
    pipe.xlen(keys.credit_outbox)
    seq, event_ids, holding, outbox = pipe.execute()
    return {
        "tenant": tenant,
        "ready": meta.get(META_READY) == "1",
        "meta": meta,
        "sequence": _number(seq),
        "rememberedEventIds": int(event_ids),
        "classes": classes,
        "references": refs,
        "balances": _balances(client, keys, limit),
        "usersHoldingCredits": int(holding),
        "creditOutbox": int(outbox),
    }


def _class_contents(
    client: redis.Redis, keys: TenantKeys, data_class: keyspace.DataClass, limit: int
) -> dict[str, Any]:
    values = {text(k): v for k, v in client.hgetall(keys.values(data_class)).items()}
    stamps = text_map(client.hgetall(keys.stamps(data_class)))
    entries = [
        {"field": name, "value": decode_value(values[name]), "stamp": stamps.get(name)}
        for name in sorted(values)[:limit]
    ]
    tombstones = sorted(name for name in stamps if name not in values)
    return {
        "count": len(values),
        "entries": entries,
        "tombstones": len(tombstones),
        "tombstoneEntries": [{"field": n, "stamp": stamps[n]} for n in tombstones[:limit]],
    }


def _refs(client: redis.Redis, keys: TenantKeys, kind: RefKind, limit: int) -> list[Any]:
    pattern = keys.ref_pattern(kind)
    prefix = pattern[:-1]
    found = []
    for key in client.scan_iter(match=pattern, count=500):
        found.append(text(key))
        if len(found) >= limit:
            break
    entries = []
    for key in sorted(found):
        kind_of = text(client.type(key))
        if kind_of == "hash":
            raw = {text(k): v for k, v in client.hgetall(key).items()}
            body: Any = {k: decode_value(v) for k, v in raw.items()}
        else:
            body = decode_value(client.get(key) or b"")
        ttl_ms = int(client.pttl(key))
        entries.append(
            {"id": key[len(prefix) :], "ttlMs": ttl_ms, "entry": body, **_until(body, ttl_ms)}
        )
    return entries


def _until(body: Any, ttl_ms: int) -> dict[str, int | None]:
    """When a reference entry stops being fresh (its ``expires-ms``) and when Redis drops it
    (the key's TTL, which adds the stale-if-error window): two different moments."""
    expires = body.get("expires-ms") if isinstance(body, dict) else None
    now = int(time.time() * 1000)
    return {
        "freshUntilMs": expires if isinstance(expires, int) else None,
        "staleUntilMs": now + ttl_ms if ttl_ms >= 0 else None,
    }


def _balances(client: redis.Redis, keys: TenantKeys, limit: int) -> dict[str, str]:
    prefix = keys.balance_pattern[:-1]
    balances: dict[str, str] = {}
    for key in client.scan_iter(match=keys.balance_pattern, count=500):
        name = text(key)
        balances[name[len(prefix) :]] = text(client.get(name) or b"")
        if len(balances) >= limit:
            break
    return dict(sorted(balances.items()))
