"""The subscriber's pub/sub connections: listed tenants spread over several, each watched like
the single one was (a lost connection means resubscribe everything and resync)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from consumer.ingest.pubsub_shards import Pace, PubSubShards, channel_groups
from crmcache.keyspace import STREAMS, DataClass, TenantKeys, input_patterns
from ops.dev.redis_server import RedisServer
from tests.conftest import RunningSubscriber, wait_until
from tests.tcp_proxy import TcpProxy


@pytest.mark.parametrize(
    ("tenants", "shards", "expected"),
    [
        (("a", "b", "c"), 16, [("a",), ("b",), ("c",)]),
        (("a", "b", "c", "d", "e"), 2, [("a", "c", "e"), ("b", "d")]),
        (("a", "b"), 1, [("a", "b")]),
    ],
)
def test_tenant_i_listens_on_connection_i_mod_shards_with_all_its_channels(
    tenants: tuple[str, ...], shards: int, expected: list[tuple[str, ...]]
) -> None:
    assert channel_groups(tenants, shards) == [input_patterns(group) for group in expected]


def test_without_listed_tenants_the_patterns_stay_on_one_connection() -> None:
    assert channel_groups((), 16) == [input_patterns()]


def pubsub_client_ids(r: redis.Redis) -> set[int]:
    return {int(client["id"]) for client in r.client_list(_type="pubsub")}


def test_killing_one_of_the_connections_resubscribes_and_the_resync_heals_the_loss(
    r: redis.Redis,
    wrapper: Any,
    store: Any,
    start_subscriber: Callable[..., RunningSubscriber],
) -> None:
    # Given a subscriber serving four listed tenants on four pub/sub connections
    before = pubsub_client_ids(r)
    running = start_subscriber(tenants=("acme", "globex", "third", "fourth"), subscriber_shards=4)
    sub = running.subscriber
    wait_until(lambda: sub.stats["subscribes"] >= 1, what="subscription")
    ours = pubsub_client_ids(r) - before
    assert len(ours) == 4
    assert len(r.pubsub_channels("crm:*")) >= 4 * len(STREAMS)
    wait_until(lambda: store.is_ready("acme") and store.is_ready("globex"), what="first resync")
    # And changes at the Wrapper whose events never reached the subscriber
    wrapper.set_credit_cost("acme", "crm.leads.create", 7, publish=False)
    wrapper.set_credit_cost("globex", "crm.leads.create", 8, publish=False)
    # When Redis kills just one of its connections
    assert r.client_kill_filter(_id=str(min(ours))) == 1
    # Then it subscribes every connection again, and the resync brings the lost changes
    for tenant, value in (("acme", b"7"), ("globex", b"8")):
        costs = TenantKeys.of(tenant).values(DataClass.CREDIT_COSTS)
        wait_until(
            lambda c=costs, v=value: r.hget(c, "crm.leads.create") == v, what=f"{tenant} healed"
        )
    assert sub.stats["subscribes"] >= 2
    assert sub.stats["reconnects"] >= 1
    wait_until(lambda: len(pubsub_client_ids(r) - before - ours) == 4, what="four new connections")


def test_silent_connections_are_detected_and_replaced(
    r: redis.Redis,
    start_subscriber: Callable[..., RunningSubscriber],
    redis_server: RedisServer,
) -> None:
    proxy = TcpProxy(redis_server.port)
    try:
        # Given a subscriber whose three pub/sub connections pass through a proxy
        running = start_subscriber(
            redis_url=proxy.url, tenants=("acme", "globex", "halfopen"), subscriber_shards=3
        )
        sub = running.subscriber
        wait_until(lambda: sub.stats["subscribes"] >= 1, what="subscription")
        # When they go silent without closing (no FIN, no RST)
        proxy.freeze()
        # Then the subscriber notices and subscribes again over new connections
        wait_until(lambda: sub.stats["subscribes"] >= 2, timeout=15, what="resubscription")
        keys = TenantKeys.of("halfopen")
        body = json.dumps(
            {"eventType": "credit-config-changed", "data": {"operationCode": "x", "newValue": 3}}
        )
        wait_until(lambda: r.publish(keys.channel("credit-configs"), body) == 1, what="listening")
        wait_until(lambda: r.hget(keys.values(DataClass.CREDIT_COSTS), "x") == b"3", what="event")
    finally:
        proxy.close()


# --- pacing the connections of bulk tenants -------------------------------------------------


@given(
    rate=st.integers(min_value=1, max_value=100_000),
    quota=st.integers(min_value=1, max_value=1_000),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.5), st.integers(0, 2_000)), max_size=60
    ),
)
def test_a_pace_never_allows_more_than_its_rate_plus_one_chunk(
    rate: int, quota: int, steps: list[tuple[float, int]]
) -> None:
    pace = Pace(rate, quota, now=0.0)
    assert 1 <= pace.chunk <= quota
    now, read = 0.0, 0
    for elapsed, backlog in steps:
        now += elapsed
        allowed = pace.allowance(now)
        assert allowed in (0, pace.chunk)
        taken = min(allowed, backlog)
        pace.spend(taken)
        read += taken
        assert read <= pace.chunk + rate * now + 1e-6
        if not allowed:  # held: it may read again after wait_time, not before
            assert pace.allowance(now + pace.wait_time() + 1e-9) == pace.chunk


def test_a_paced_connection_is_read_at_its_rate_while_the_others_are_read_at_once(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    flood, quiet = TenantKeys.of("flood"), TenantKeys.of("quiet")
    shards = PubSubShards(
        redis.Redis.from_url(redis_server.url), channel_groups(("flood", "quiet"), 2), "subscribe"
    )
    received: list[str] = []
    try:
        shards.subscribe(timeout=5)
        # Given the flood tenant's connection paced at 1,000 messages a second
        shards.pace({0}, rate=1_000, quota=100)
        assert shards.paced == {0}
        # When 2,000 messages wait on it, and then one arrives on the other connection
        pipe = r.pipeline(transaction=False)
        for i in range(2_000):
            pipe.publish(flood.channel("users"), str(i))
        pipe.publish(quiet.channel("users"), "quiet")
        pipe.execute()
        started = time.monotonic()

        def receive(message: dict[str, Any]) -> None:
            received.append(message["data"].decode())

        idle_turns = 0
        while time.monotonic() - started < 0.5:
            idle_turns += shards.read(receive, 100, 0.05)
        elapsed = time.monotonic() - started
    finally:
        shards.close()
    # Then the other connection's message came within the first chunk of the flood
    assert "quiet" in received[:21]
    # And the flood was read at the pace (one chunk ahead at most), the rest left in Redis
    flood_read = len(received) - 1
    assert 0.5 * 1_000 * 0.5 <= flood_read <= 20 + 1_000 * elapsed
    # And while only the paced backlog was left, the reader said it was idle (it may flush)
    assert idle_turns > 0


def publish_user_changes(r: redis.Redis, tenant: str, count: int) -> str:
    """Publish `count` user changes at once; returns the tenant's user-status hash."""
    keys = TenantKeys.of(tenant)
    pipe = r.pipeline(transaction=False)
    for i in range(count):
        body = {"eventType": "user-changed", "data": {"userId": f"u{i}", "status": "active"}}
        pipe.publish(keys.channel("users"), json.dumps(body))
    pipe.execute()
    return keys.values(DataClass.USER_STATUS)


def test_a_connection_shared_with_a_tenant_that_is_not_bulk_is_not_paced(
    r: redis.Redis, start_subscriber: Callable[..., RunningSubscriber]
) -> None:
    # Given three tenants on two connections: "flood" shares connection 0 with "third"
    running = start_subscriber(
        tenants=("flood", "quiet", "third"), subscriber_shards=2, bulk_max_rate=200
    )
    wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
    # When "flood" publishes 2,000 user changes at once (paced at 200/s: about 10 s)
    users = publish_user_changes(r, "flood", 2_000)
    # Then its connection is read at full speed: pacing it would hold "third" behind the backlog
    wait_until(lambda: r.hlen(users) == 2_000, timeout=4, what="the flood, unpaced")


def test_the_subscriber_paces_a_flooding_tenant_and_loses_nothing(
    r: redis.Redis, start_subscriber: Callable[..., RunningSubscriber]
) -> None:
    # Given a subscriber of two listed tenants, bulk tenants paced at 500 events a second
    running = start_subscriber(tenants=("flood", "quiet"), bulk_max_rate=500)
    wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
    # When one of them publishes 2,000 user changes at once
    users = publish_user_changes(r, "flood", 2_000)
    published = time.monotonic()
    # Then they are taken at about the pace (unpaced, all of them land within ~0.3 s here)
    time.sleep(max(0.0, published + 1.0 - time.monotonic()))
    assert r.hlen(users) < 1_500
    # And every one of them arrives
    wait_until(lambda: r.hlen(users) == 2_000, timeout=30, what="the whole flood")
    assert running.subscriber.stats["reconnects"] == 0
