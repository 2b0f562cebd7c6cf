"""Lost change notifications (issue 13, item 4): a reader that misses a revoke's notification
never serves its near-cache's grant for longer than CRM_NEAR_CACHE_STALENESS_MS, whether its
pub/sub connection was killed (``CLIENT KILL TYPE pubsub``: it must also subscribe again) or
the notification vanished on a connection that looks alive (only the version check helps);
and what that check sends: one ``HMGET`` per tenant, about every half bound, also when the
bound is shorter than the background's 50 ms tick."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from crmcache.events import parse_envelope
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.store import Store
from tests.conftest import wait_until
from tests.reader_helpers import command_calls, load_snapshot, private_redis, reader, small_tenant

KEYS = TenantKeys.of("acme")
USER, PERM = "user-1", "crm.leads.create"
SLACK_S = 0.15
"""Past the bound: one background tick (50 ms) and scheduling on a loaded machine."""
POLL_S = 0.001


def suspend_as_the_workers_do(store: Store, user: str) -> None:
    """A ``user-changed`` (suspended) event applied by apply_events, which announces it."""
    envelope = {"eventType": "user-changed", "data": {"userId": user, "status": "suspended"}}
    seq = int(store.redis.incr(KEYS.seq))
    store.apply_events("acme", [replace(parse_envelope("acme", "users", envelope), seq=seq)])


def reactivate_as_the_workers_do(store: Store, user: str) -> None:
    envelope = {"eventType": "user-changed", "data": {"userId": user, "status": "active"}}
    seq = int(store.redis.incr(KEYS.seq))
    store.apply_events("acme", [replace(parse_envelope("acme", "users", envelope), seq=seq)])


def answers_after(crm: Any, since: float, window_s: float) -> list[tuple[float, bool]]:
    """(seconds since ``since``, granted) of a check every millisecond for ``window_s``."""
    seen = []
    while (now := time.monotonic()) - since < window_s:
        seen.append((now - since, crm.check_permission(USER, PERM)))
        time.sleep(POLL_S)
    return seen


def first_denial(seen: list[tuple[float, bool]]) -> float:
    """When the reader first denied; and it never granted again after that."""
    denied = [at for at, granted in seen if not granted]
    assert denied, "the reader never denied"
    late = [at for at, granted in seen if granted and at > denied[0]]
    assert not late, f"granted again {late[0] * 1000:.0f} ms after the revoke"
    return denied[0]


def kill_reader_pubsub_and_suspend(r: Any, store: Store) -> None:
    """Kill the reader's pub/sub connection and apply the revoke before it subscribes again,
    so that its notification reaches nobody (retried if the reader was quicker)."""
    for _ in range(5):
        assert r.client_kill_filter(_type="pubsub") == 1  # the reader's, on our own Redis
        suspend_as_the_workers_do(store, USER)
        if r.pubsub_numpat() == 0:  # still none after the PUBLISH: nobody heard it
            return
        reactivate_as_the_workers_do(store, USER)
        time.sleep(0.3)
    pytest.fail("the reader subscribed again before every revoke")


@pytest.mark.parametrize("bound_ms", [100, 1000])
def test_a_reader_whose_pubsub_is_killed_denies_within_the_bound_and_subscribes_again(
    settings: Any, bound_ms: int
) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        r = own_store.redis
        # Given a listening reader whose near-cache grants the permission
        load_snapshot(own_store, "acme", small_tenant(1))
        with reader(own_settings, near_cache_staleness_ms=bound_ms) as crm:
            crm.initialize()
            assert crm.check_permission_detail(USER, PERM).source == "near-cache"
            wait_until(lambda: crm.cache.listening and r.pubsub_numpat() == 1, what="listening")
            # When its pub/sub connection is killed and a revoke lands unheard
            kill_reader_pubsub_and_suspend(r, own_store)
            revoked = time.monotonic()
            # Then it denies within the bound, and never grants again
            seen = answers_after(crm, revoked, max(2 * bound_ms / 1000, 1.0))
            denied_at = first_denial(seen)
            assert denied_at <= bound_ms / 1000 + SLACK_S
            # And it subscribes again: a change is heard long before a version check finds it
            wait_until(lambda: crm.cache.listening and r.pubsub_numpat() == 1, what="resubscribe")
            heard = notified_within(crm, own_store, bound_ms)
            print(
                f"bound {bound_ms} ms: denied {denied_at * 1000:.1f} ms after the unheard revoke "
                f"({len(seen)} checks); after resubscribing, changes seen in "
                f"{', '.join(f'{h * 1000:.1f}' for h in heard)} ms"
            )


def notified_within(crm: Any, store: Store, bound_ms: int) -> list[float]:
    """Three changes in turn, each timed from the write to the reader's new answer: each is
    seen faster than a version check would find it (every half bound), so it was heard."""
    heard = []
    for change, expected in [
        (reactivate_as_the_workers_do, True),
        (suspend_as_the_workers_do, False),
        (reactivate_as_the_workers_do, True),
    ]:
        time.sleep(0.01)
        crm.check_permission(USER, PERM)  # cached again before the change
        change(store, USER)
        written = time.monotonic()
        while crm.check_permission(USER, PERM) is not expected:
            assert time.monotonic() - written < 2.0, "change never seen"
            time.sleep(POLL_S)
        heard.append(time.monotonic() - written)
    assert max(heard) < min(bound_ms / 4000, 0.05), heard
    return heard


@pytest.mark.parametrize("bound_ms", [100, 1000])
def test_a_notification_lost_on_a_live_connection_is_caught_within_the_bound(
    settings: Any, bound_ms: int
) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        r = own_store.redis
        # Given a listening reader whose near-cache grants the permission
        load_snapshot(own_store, "acme", small_tenant(1))
        with reader(own_settings, near_cache_staleness_ms=bound_ms) as crm:
            crm.initialize()
            wait_until(lambda: crm.cache.listening, what="listening")
            time.sleep(0.1)
            assert crm.check_permission_detail(USER, PERM).source == "near-cache"
            # When a revoke lands in Redis and its notification is lost on the way (no
            # PUBLISH), the connection staying up
            r.hset(KEYS.values(DataClass.USER_STATUS), USER, "suspended")
            r.hincrby(KEYS.meta, "version", 1)
            revoked = time.monotonic()
            # Then the reader denies within the bound, and never grants again
            seen = answers_after(crm, revoked, max(2 * bound_ms / 1000, 1.0))
            denied_at = first_denial(seen)
            assert denied_at <= bound_ms / 1000 + SLACK_S
            print(f"bound {bound_ms} ms: denied {denied_at * 1000:.1f} ms after the lost notice")


def test_the_version_check_sends_one_hmget_per_tenant_and_gives_a_lost_epoch_back(
    settings: Any,
) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        r = own_store.redis
        # Given an idle, listening reader holding two tenants, at a 100 ms bound
        for tenant in ("acme", "beta"):
            load_snapshot(own_store, tenant, small_tenant(1))
        with reader(own_settings, near_cache_staleness_ms=100) as crm:
            crm.initialize()
            crm.cache.tenant("beta").check_permission(USER, PERM)
            wait_until(lambda: crm.cache.listening, what="listening")
            r.config_resetstat()
            # When it idles for a second
            time.sleep(1.0)
            # Then it checked every tenant every half bound or so, with one HMGET each and no
            # HSETNX (the epoch exists)
            assert command_calls(r, "hmget") >= 2 * 8, r.info("commandstats")
            assert command_calls(r, "hsetnx") == 0
            # And a tenant whose epoch Redis lost gets one again from the next check
            r.hdel(KEYS.meta, "epoch")
            wait_until(lambda: r.hexists(KEYS.meta, "epoch"), timeout=1.0, what="a new epoch")


def test_a_short_bound_is_checked_before_it_runs_out(settings: Any) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        r = own_store.redis
        # Given an idle, listening reader with a 20 ms bound (shorter than the 50 ms tick)
        load_snapshot(own_store, "acme", small_tenant(1))
        with reader(own_settings, near_cache_staleness_ms=20) as crm:
            crm.initialize()
            wait_until(lambda: crm.cache.listening, what="listening")
            r.config_resetstat()
            time.sleep(1.0)
            # Then it checked about every half bound (not every tick: 20 a second would leave
            # the near-cache untrusted most of the time), and the near-cache is trusted
            assert command_calls(r, "hmget") >= 40, r.info("commandstats")
            assert crm.check_permission_detail(USER, PERM).source == "near-cache"
