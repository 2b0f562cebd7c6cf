"""Many tenants listed in CRM_TENANTS: the subscriber listens on exact channels, never on one
pattern per tenant (Redis matches every PUBLISH against every pattern: 5,000 patterns for 1,000
tenants cost ~140 us per PUBLISH, for every publisher of the server)."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from crmcache.keyspace import STREAMS, DataClass, TenantKeys
from tests.conftest import RunningSubscriber, wait_until


def test_listed_tenants_are_subscribed_by_exact_channel_and_others_ignored(
    r: redis.Redis, start_subscriber: Callable[..., RunningSubscriber]
) -> None:
    # Given a subscriber serving 200 listed tenants
    patterns_before = r.execute_command("PUBSUB", "NUMPAT")
    tenants = tuple(f"listed{i}" for i in range(200))
    sub = start_subscriber(tenants=tenants)
    wait_until(lambda: sub.subscriber.stats["subscribes"] >= 1, what="subscription")
    # Then it holds one exact subscription per tenant and stream, and no pattern
    assert r.execute_command("PUBSUB", "NUMPAT") == patterns_before
    assert len(r.pubsub_channels("crm:listed*")) == len(tenants) * len(STREAMS)
    # And an event of a listed tenant is applied, one of another tenant is not received
    body = {"eventType": "credit-config-changed", "data": {"operationCode": "op", "newValue": 1}}
    assert r.publish(TenantKeys.of("stranger").channel("credit-configs"), json.dumps(body)) == 0
    assert r.publish(TenantKeys.of("listed7").channel("credit-configs"), json.dumps(body)) == 1
    keys = TenantKeys.of("listed7")
    wait_until(lambda: r.hget(keys.values(DataClass.CREDIT_COSTS), "op") == b"1", what="cost")
