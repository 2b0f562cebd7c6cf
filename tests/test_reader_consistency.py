"""Consistency levels on critical reads (consumer/read/consistency.py), against a real Redis:
``minimize_latency`` may answer from the near-cache, ``fully_consistent`` never does,
``at_least_as_fresh`` answers only from data at or past its token (waiting a bounded time for
it), and neither strong level is ever answered from last-known-good."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from consumer.read.consistency import AtLeastAsFresh
from crmcache.errors import StoreUnavailable, TokenNotReached
from crmcache.events import parse_envelope
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.store import Store
from crmcache.tokens import InvalidToken, parse_token
from tests.reader_helpers import load_snapshot, private_redis, reader, small_tenant

KEYS = TenantKeys.of("acme")
USER, PERM = "user-1", "crm.leads.create"


def suspend(store: Store, user: str, upstream_seq: int | None = None) -> Any:
    envelope: dict[str, Any] = {
        "eventType": "user-changed",
        "data": {"userId": user, "status": "suspended"},
    }
    if upstream_seq is not None:
        envelope["seq"] = upstream_seq
    seq = int(store.redis.incr(KEYS.seq))
    event = replace(parse_envelope("acme", "users", envelope), seq=seq)
    return store.apply_events("acme", [event])


def silently_suspend(r: redis.Redis, user: str) -> None:
    """A change in Redis with a new version but no notification (a PUBLISH lost on the way)."""
    r.hset(KEYS.values(DataClass.USER_STATUS), user, "suspended")
    r.hincrby(KEYS.meta, "version", 1)


def test_fully_consistent_skips_the_near_cache(store: Store, settings: Any, r: redis.Redis) -> None:
    load_snapshot(store, "acme", small_tenant(1))
    with reader(settings, near_cache_staleness_ms=60_000) as crm:
        crm.initialize()
        assert crm.check_permission_detail(USER, PERM).source == "near-cache"
        silently_suspend(r, USER)
        assert crm.check_permission(USER, PERM)  # minimize_latency: the trusted near-cache
        strict = crm.check_permission_detail(USER, PERM, "fully_consistent")
        assert (strict.authorized, strict.source) == (False, "redis")
        assert parse_token(strict.token).version == int(r.hget(KEYS.meta, "version") or 0)


def test_at_least_as_fresh_answers_from_data_at_or_past_the_token(
    store: Store, settings: Any, r: redis.Redis
) -> None:
    load_snapshot(store, "acme", small_tenant(1))
    with reader(settings, near_cache_staleness_ms=60_000) as crm:
        crm.initialize()
        before = crm.check_permission_detail(USER, PERM)
        assert before.authorized and before.token
        # a write whose notification this reader may not have heard yet
        token = suspend(store, USER).token
        answer = crm.check_permission_detail(USER, PERM, AtLeastAsFresh(token))
        assert not answer.authorized
        assert parse_token(answer.token).version >= parse_token(token).version
        # the string form works too, and an old token may be answered from the near-cache
        assert crm.check_permission(USER, PERM, f"at_least_as_fresh:{before.token}") is False


def test_a_seq_token_is_answered_once_the_event_is_applied(
    store: Store, settings: Any, r: redis.Redis
) -> None:
    load_snapshot(store, "acme", small_tenant(1))
    with reader(settings, consistency_wait_ms=100) as crm:
        suspend(store, USER, upstream_seq=5)
        assert crm.check_permission(USER, PERM, AtLeastAsFresh("users:5")) is False
        with pytest.raises(TokenNotReached):
            crm.check_permission(USER, PERM, AtLeastAsFresh("users:6"))


def test_a_token_the_cache_does_not_reach_fails_after_the_bounded_wait(
    store: Store, settings: Any, r: redis.Redis
) -> None:
    load_snapshot(store, "acme", small_tenant(1))
    with reader(settings, consistency_wait_ms=150) as crm:
        current = parse_token(crm.check_permission_detail(USER, PERM).token)
        ahead = f"v1.{current.epoch}.{current.version + 100}"
        started = time.monotonic()
        with pytest.raises(TokenNotReached) as refused:
            crm.check_permission(USER, PERM, AtLeastAsFresh(ahead))
        assert time.monotonic() - started >= 0.15
        assert ahead in str(refused.value)


def test_a_malformed_token_is_refused(store: Store, settings: Any) -> None:
    load_snapshot(store, "acme", small_tenant(1))
    with reader(settings) as crm, pytest.raises(InvalidToken):
        crm.check_permission(USER, PERM, "at_least_as_fresh:not-a-token")


def test_degraded_mode_never_answers_a_strong_level(settings: Any) -> None:
    with private_redis(settings) as (server, private, store):
        load_snapshot(store, "acme", small_tenant(1))
        with reader(private) as crm:
            crm.initialize()
            token = crm.check_permission_detail(USER, PERM).token
            server.stop()
            stale = crm.check_permission_detail(USER, PERM)
            assert stale.source == "last-known-good"  # minimize_latency degrades
            with pytest.raises(StoreUnavailable):
                crm.check_permission(USER, PERM, "fully_consistent")
            with pytest.raises(StoreUnavailable):
                crm.check_permission(USER, PERM, AtLeastAsFresh(token))
