"""The near-cache: coherent with Redis through the workers' change notifications, with a hard
staleness bound, and one Redis round trip per miss."""

from __future__ import annotations

import time
from typing import Any

import redis

from consumer.read.background import Background
from consumer.read.near_cache import NearCache
from crmcache.events import Event
from crmcache.keyspace import DataClass, TenantKeys
from tests.conftest import wait_until
from tests.reader_helpers import command_calls, preload, private_redis, reader

KEYS = TenantKeys.of("acme")


def test_role_changed_by_an_event_changes_the_answer_within_the_staleness_bound(
    store: Any, wrapper: Any, settings: Any, subscriber: Any, r: redis.Redis
) -> None:
    # Given a reader whose near-cache holds user-456's access (sales may create leads)
    preload(store, settings)
    with reader(settings, near_cache_staleness_ms=1000) as crm:
        crm.initialize()
        assert crm.check_permission("user-456", "crm.leads.create")
        assert crm.check_permission_detail("user-456", "crm.leads.create").source == "near-cache"
        # When the Wrapper changes the sales role (event -> subscriber -> worker -> Redis)
        wrapper.set_role("acme", "sales", ["crm.contacts.view"])
        wait_until(
            lambda: b"crm.leads" not in (r.hget(KEYS.values(DataClass.ROLES), "sales") or b""),
            what="the worker applying role-changed",
        )
        applied = time.monotonic()
        # Then the reader's answer changes within the bound (here: at the notification)
        wait_until(
            lambda: not crm.check_permission("user-456", "crm.leads.create"),
            timeout=1.0,
            interval=0.005,
            what="the near-cache dropping the old role",
        )
        assert time.monotonic() - applied < 1.0


def test_a_missed_notification_is_caught_by_the_version_check_within_the_bound(
    store: Any, wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    # Given a reader trusting its near-cache, with a 300 ms staleness bound
    preload(store, settings)
    with reader(settings, near_cache_staleness_ms=300) as crm:
        crm.initialize()
        assert crm.get_credit_cost_detail("crm.leads.create").source == "near-cache"
        # When Redis changes without any notification (a PUBLISH lost on the way)
        r.hset(KEYS.values(DataClass.CREDIT_COSTS), "crm.leads.create", "7")
        r.hincrby(KEYS.meta, "version", 1)
        changed = time.monotonic()
        # Then the reader answers the new cost within the bound, without being told
        wait_until(
            lambda: crm.get_credit_cost("crm.leads.create") == 7,
            timeout=1.0,
            interval=0.005,
            what="the new cost",
        )
        assert time.monotonic() - changed < 0.3 + 0.1  # bound + one background tick


def test_lost_notifications_make_the_reader_revalidate_before_trusting_its_copy(
    wrapper: Any, settings: Any
) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        # Given a reader with a long staleness bound and a trusted near-cache
        preload(own_store, own_settings)
        with reader(own_settings, near_cache_staleness_ms=60_000) as crm:
            crm.initialize()
            assert crm.get_credit_cost_detail("crm.leads.create").source == "near-cache"
            wait_until(
                lambda: crm.cache.listening,
                what="the reader's subscription",
            )
            time.sleep(0.3)  # its confirmation handled (a revalidation) before we change data
            # When a change's notification is lost (applied without PUBLISH) and the reader
            # learns that its pub/sub connection was lost
            own_store.redis.hset(KEYS.values(DataClass.CREDIT_COSTS), "crm.leads.create", "9")
            own_store.redis.hincrby(KEYS.meta, "version", 1)
            assert crm.get_credit_cost("crm.leads.create") == 1  # trusted, not yet known
            own_store.redis.client_kill_filter(_type="pubsub")
            # Then it does not trust the copy it could not keep coherent: it sees the change
            # long before its 60 s bound
            wait_until(
                lambda: crm.get_credit_cost("crm.leads.create") == 9,
                timeout=3.0,
                what="revalidation after the lost connection",
            )


class Subscribing:
    """A stand-in client for the background thread: records what the thread tells it."""

    def __init__(self) -> None:
        self.subscribed = 0

    def on_change(
        self, tenant: str, version: int, written: int | None, access: int | None = None
    ) -> None: ...

    def on_disconnect(self) -> None: ...

    def on_subscribed(self) -> None:
        self.subscribed += 1

    def tick(self, now: float) -> None: ...


def test_every_confirmed_subscription_is_reported_to_the_readers(settings: Any) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        stand_in = Subscribing()
        background = Background(own_settings, stand_in)
        background.ensure_running()
        try:
            wait_until(lambda: stand_in.subscribed == 1, what="the first subscription")
            own_store.redis.client_kill_filter(_type="pubsub")
            wait_until(lambda: stand_in.subscribed == 2, what="the subscription after reconnect")
        finally:
            background.stop()


def test_a_confirmed_subscription_revalidates_the_copy_at_once(wrapper: Any, settings: Any) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        # Given a reader with a long staleness bound, trusting its near-cache
        preload(own_store, own_settings)
        with reader(own_settings, near_cache_staleness_ms=60_000) as crm:
            crm.initialize()
            assert crm.get_credit_cost_detail("crm.leads.create").source == "near-cache"
            # When a change lands unannounced before notifications flow (between the first
            # read and the subscription's confirmation)
            own_store.redis.hset(KEYS.values(DataClass.CREDIT_COSTS), "crm.leads.create", "9")
            own_store.redis.hincrby(KEYS.meta, "version", 1)
            assert crm.get_credit_cost("crm.leads.create") == 1  # trusted, not yet known
            # Then the confirmation (what the background thread calls) makes it known at once
            crm.cache.on_subscribed()
            assert crm.get_credit_cost("crm.leads.create") == 9
            assert (
                crm.get_credit_cost_detail("crm.leads.create").source == "near-cache"
            )  # and trusted


def test_a_near_cache_miss_costs_one_round_trip_and_a_hit_none(wrapper: Any, settings: Any) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        preload(own_store, own_settings)
        with reader(own_settings) as crm:
            crm.check_permission("user-123", "x")  # the first call ever also loads the script
            before = {c: command_calls(own_store.redis, c) for c in ("evalsha", "hget", "get")}
            # When a user's permission is checked 20 times (one miss, then hits)
            for _ in range(20):
                assert crm.check_permission("user-456", "crm.leads.create")
            after = {c: command_calls(own_store.redis, c) for c in ("evalsha", "hget", "get")}
            # Then Redis ran exactly one script call (whose two HGETs count as calls too)
            assert after["evalsha"] - before["evalsha"] == 1
            assert after["hget"] - before["hget"] == 2 and after["get"] == before["get"]


def test_near_cache_off_asks_redis_every_time(wrapper: Any, settings: Any) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        preload(own_store, own_settings)
        with reader(own_settings, near_cache=False) as crm:
            crm.get_credit_cost("crm.leads.create")  # the first call ever also loads the script
            before = command_calls(own_store.redis, "evalsha")
            # When a cost is read 10 times with the near-cache off
            answers = [crm.get_credit_cost_detail("crm.reports.export") for _ in range(10)]
            # Then every answer came from Redis in one script call each
            assert {a.source for a in answers} == {"redis"}
            assert {a.cost for a in answers} == {5}
            assert command_calls(own_store.redis, "evalsha") - before == 10


def test_redis_losing_its_data_starts_a_new_generation(
    store: Any, wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    # Given a reader that has seen version N of acme
    preload(store, settings)
    with reader(settings) as crm:
        crm.initialize()
        assert crm.get_credit_cost("crm.leads.create") == 1
        # When Redis loses everything and is loaded again with a lower version and other data
        r.flushdb()
        wrapper.set_credit_cost("acme", "crm.leads.create", 3, publish=False)
        preload(store, settings)
        # Then the reader does not keep the old generation: it answers the new cost
        wait_until(
            lambda: crm.get_credit_cost("crm.leads.create") == 3,
            timeout=3.0,
            what="the reloaded cost",
        )


def test_an_applied_event_reaches_the_reader_through_the_store(
    store: Any, wrapper: Any, settings: Any
) -> None:
    # Given a reader with a warm near-cache
    preload(store, settings)
    with reader(settings, near_cache_staleness_ms=60_000) as crm:
        crm.initialize()
        assert crm.get_credit_cost("crm.contacts.view") == 0
        # When the write side applies credit-config-changed (which PUBLISHes the new version)
        seq = int(store.redis.incr(KEYS.seq))
        store.apply_events(
            "acme",
            [
                Event(
                    tenant="acme",
                    stream="credit-configs",
                    event_type="credit-config-changed",
                    data={"operationCode": "crm.contacts.view", "newValue": 2},
                    seq=seq,
                )
            ],
        )
        # Then the notification alone (the bound is 60 s) makes the reader answer the new cost
        wait_until(
            lambda: crm.get_credit_cost("crm.contacts.view") == 2,
            timeout=2.0,
            what="the notified change",
        )


def test_generations_follow_epoch_and_version() -> None:
    cache = NearCache(staleness_ms=1000, max_entries=100)
    # Given a cache that has confirmed (epoch A, version 5)
    first = cache.observe(b"A", 5, started=1.0, ready=True)
    assert cache.observe(b"A", 5, started=1.1) == first  # same data: same generation
    # Then a slower read of an older version may not be cached
    assert cache.observe(b"A", 4, started=0.9) is None
    # ... a higher version starts a generation
    second = cache.observe(b"A", 6, started=1.2)
    assert second is not None and second > first
    # ... and so does another epoch with the same (or a lower) version: Redis lost its data
    third = cache.observe(b"B", 6, started=1.3)
    assert third is not None and third > second
    # ... but a read from before that epoch was confirmed is not cached
    assert cache.observe(b"A", 7, started=1.25) is None
    # A notification bumps the generation for a higher version, and never confirms
    trusted = cache.trusted_until
    cache.notify(7)
    assert cache.gen > third and cache.trusted_until == trusted
    # ... except the next version when the workers wrote no critical field
    gen = cache.gen
    cache.notify(8, written=0)
    assert (cache.gen, cache.version) == (gen, 8)
    cache.notify(10, written=0)  # a gap: a missed notification may have written something
    assert cache.gen > gen


def test_an_event_that_writes_no_critical_field_keeps_the_near_cache_warm(
    store: Any, wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    # Given a reader with a warm near-cache, subscribed and settled
    preload(store, settings)
    with reader(settings, near_cache_staleness_ms=60_000) as crm:
        crm.initialize()
        wait_until(lambda: crm.cache.listening, what="the subscription")
        time.sleep(0.3)
        assert crm.get_credit_cost_detail("crm.leads.create").source == "near-cache"
        before = crm.get_metrics()["nearCache"]["version"]
        # When an event only invalidates reference data (hierarchy-changed bumps the version)
        seq = int(store.redis.incr(KEYS.seq))
        event = Event(
            tenant="acme",
            stream="hierarchy",
            event_type="hierarchy-changed",
            data={"entityId": "team-sales"},
            seq=seq,
        )
        store.apply_events("acme", [event])
        wait_until(
            lambda: crm.get_metrics()["nearCache"]["version"] == before + 1,
            what="the notification",
        )
        # Then critical reads still come from the near-cache
        assert crm.get_credit_cost_detail("crm.leads.create").source == "near-cache"


def test_a_change_that_wrote_no_access_field_keeps_users_and_roles_current() -> None:
    cache = NearCache(staleness_ms=1000, max_entries=100)
    gen = cache.observe(b"A", 5, started=1.0, ready=True)
    assert gen is not None
    # When the next version wrote costs only: costs of older generations are no longer current,
    # users and roles are
    cache.notify(6, written=1, access=0)
    assert cache.gen > gen and cache.access_floor <= gen
    # ... but a version after a gap, or one that wrote an access field, drops them too
    cache.notify(8, written=1, access=0)
    assert cache.access_floor == cache.gen
    floor = cache.access_floor
    cache.notify(9, written=2, access=1)
    assert cache.access_floor == cache.gen > floor


def test_a_cost_change_keeps_permission_answers_in_the_near_cache(
    store: Any, wrapper: Any, settings: Any
) -> None:
    # Given a reader with a warm near-cache, subscribed and settled
    preload(store, settings)
    with reader(settings, near_cache_staleness_ms=60_000) as crm:
        crm.initialize()
        wait_until(lambda: crm.cache.listening, what="the subscription")
        time.sleep(0.3)
        assert crm.check_permission_detail("user-456", "crm.leads.create").source == "near-cache"
        before = crm.get_metrics()["nearCache"]["version"]
        # When the workers apply a credit-config change (it bumps the version)
        data = {"operationCode": "crm.contacts.view", "newValue": 2}
        seq = int(store.redis.incr(KEYS.seq))
        event = Event("acme", "credit-configs", "credit-config-changed", data, seq=seq)
        store.apply_events("acme", [event])
        wait_until(
            lambda: crm.get_metrics()["nearCache"]["version"] == before + 1,
            what="the notification",
        )
        # Then permission checks still come from the near-cache, and the cost from Redis
        assert crm.check_permission_detail("user-456", "crm.leads.create").source == "near-cache"
        assert crm.get_credit_cost_detail("crm.contacts.view").cost == 2
        # And a suspension's notification does drop the user's entry
        seq = int(store.redis.incr(KEYS.seq))
        data = {"userId": "user-456", "status": "suspended"}
        store.apply_events("acme", [Event("acme", "users", "user-changed", data, seq=seq)])
        wait_until(
            lambda: not crm.check_permission("user-456", "crm.leads.create"),
            timeout=2.0,
            what="the suspension",
        )
