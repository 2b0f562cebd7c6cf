"""The active subscriber's lease: a holder whose lease another took can neither renew it nor
keep serving (real Redis, a real Subscriber and worker)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from crmcache import keyspace
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.store import Store
from tests.conftest import wait_until

COSTS = TenantKeys.of("acme").values(DataClass.CREDIT_COSTS)


def test_renewing_a_lease_that_another_holder_took_is_refused(r: redis.Redis, store: Store) -> None:
    # Given our lease expired and another holder took it
    assert store.acquire_lease(keyspace.LEADER, "ours", 50)
    wait_until(lambda: not r.exists(keyspace.LEADER), what="our lease to expire")
    assert store.acquire_lease(keyspace.LEADER, "theirs", 60_000)
    # When we try to renew ours
    renewed = store.renew_lease(keyspace.LEADER, "ours", 200)
    # Then it is refused and their lease is untouched
    assert renewed is False
    assert store.lease_holder(keyspace.LEADER) == "theirs"
    assert r.pttl(keyspace.LEADER) > 50_000


def test_a_subscriber_whose_lease_another_took_steps_down_and_stands_by(
    r: redis.Redis, store: Store, subscriber: Any
) -> None:
    # Given the active subscriber, paused long enough for its lease to pass to another holder
    running = subscriber.subscriber
    assert running.is_leader and r.get(keyspace.LEADER) == running.token.encode()
    r.set(keyspace.LEADER, "another-subscriber", px=60_000)
    # When it next renews, then it steps down and leaves the other's lease alone
    wait_until(lambda: not running.is_leader, timeout=5, what="the subscriber to step down")
    time.sleep(running.settings.leader_lease)  # a few renewal periods
    assert store.lease_holder(keyspace.LEADER) == "another-subscriber"
    assert r.pttl(keyspace.LEADER) > 50_000
    # And it no longer forwards events: only the holder of the lease may
    cost = {"eventType": "credit-config-changed", "data": {"operationCode": "x", "newValue": 3}}
    r.publish("crm:acme:credit-configs", json.dumps(cost))
    time.sleep(0.5)
    assert r.hget(COSTS, "x") is None
    # When the other holder goes away, then it leads again
    r.delete(keyspace.LEADER)
    wait_until(lambda: running.is_leader, timeout=5, what="the subscriber to lead again")
    assert store.lease_holder(keyspace.LEADER) == running.token
