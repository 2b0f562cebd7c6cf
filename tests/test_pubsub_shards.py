"""The subscriber's pub/sub connections: listed tenants spread over several, each watched like
the single one was (a lost connection means resubscribe everything and resync)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from consumer.pubsub_shards import channel_groups
from crmcache.keyspace import STREAMS, DataClass, TenantKeys, input_patterns
from crmcache.redis_server import RedisServer
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
