"""crmcache on a Redis Cluster: three masters started by the harness, the cache named by
``redis+cluster://``; a real worker process, an in-process subscriber, readers and the HTTP API
use it.

Every multi-key command and Lua script must stay within one tenant's slot (the ``{tenant}``
hash tag), or the Cluster answers CROSSSLOT: the end-to-end runs below prove they do, with
tenants served by different masters. The Celery broker stays a plain Redis (kombu's Redis
transport does not support Cluster).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import SecretStr

from config.celery import celery_config
from config.settings import ConfigError, load_settings
from consumer.api import create_app
from consumer.ingest.subscriber import Subscriber
from consumer.read.client import SmartCRMConsumer
from crmcache.keyspace import DataClass, RefKind, TenantKeys
from crmcache.redis_client import make_redis
from crmcache.store import Store
from ops.dev.redis_server import RedisServer
from tasks.producer import CeleryEnqueuer
from tests.api_support import lead_body
from tests.conftest import RunningSubscriber, wait_until
from tests.processes import Proc, worker_args
from tests.reader_helpers import apply_cost, load_snapshot, small_tenant
from tests.redis_topologies import RedisClusterHarness

LEAD = "crm.leads.create"
ASK = {"userId": "user-1", "permission": LEAD}
VALIDATE = {"operation": LEAD, "userId": "user-1"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterHarness]:
    harness = RedisClusterHarness()
    try:
        harness.start()
    except Exception as exc:  # noqa: BLE001 - the reason goes into the failure
        pytest.fail(f"cannot start a Redis Cluster for the tests: {exc}")
    yield harness
    harness.stop()


@pytest.fixture(scope="module")
def cluster_broker(redis_server: RedisServer) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/8"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="module")
def cluster_settings(env: dict[str, str], cluster: RedisClusterHarness, cluster_broker: str) -> Any:
    return load_settings(REDIS_URL=cluster.url, CELERY_BROKER_URL=cluster_broker)


@pytest.fixture(scope="module")
def cluster_worker(
    cluster_settings: Any,
    cluster: RedisClusterHarness,
    cluster_broker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    worker = Proc(
        worker_args(concurrency=4),
        {**os.environ, "REDIS_URL": cluster.url, "CELERY_BROKER_URL": cluster_broker},
        tmp_path_factory.mktemp("cluster") / "worker.log",
    )
    app = Celery("cluster-test")
    app.conf.update(celery_config(cluster_settings))
    try:
        wait_until(lambda: app.control.ping(timeout=0.5), timeout=40, what="the worker")
        yield worker
    finally:
        app.close()
        worker.stop()


@pytest.fixture
def cr(cluster: RedisClusterHarness) -> Iterator[redis.Redis]:
    """A Cluster client; every master emptied before the test."""
    cluster.flush()
    client = make_redis(cluster.url)
    yield client
    client.close()


@pytest.fixture
def cluster_subscriber(
    cluster_settings: Any, cluster_worker: Proc, cr: redis.Redis
) -> Iterator[RunningSubscriber]:
    enqueuer = CeleryEnqueuer(cluster_settings)
    running = RunningSubscriber(Subscriber(cluster_settings, enqueuer)).start()
    try:
        wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
        yield running
    finally:
        running.stop()
        enqueuer.close()


def tenants_on_every_master(cluster: RedisClusterHarness) -> list[str]:
    found: dict[int, str] = {}
    for i in range(200):
        tenant = f"shard{i}"
        found.setdefault(cluster.node_of(TenantKeys.of(tenant).meta), tenant)
        if len(found) == len(cluster.servers):
            return sorted(found.values())
    raise AssertionError("no tenant found for some master")


def publish(client: redis.Redis, tenant: str, stream: str, event_type: str, data: Any) -> None:
    body = json.dumps({"eventType": event_type, "data": data})
    client.publish(TenantKeys.of(tenant).channel(stream), body)


def test_a_cluster_url_without_a_broker_url_is_refused_naming_the_variable(
    cluster: RedisClusterHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL"):
        load_settings(REDIS_URL=cluster.url)
    node = f"redis://127.0.0.1:{cluster.servers[0].port}"
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL"):
        load_settings(REDIS_URL=node, CRM_REDIS_CLUSTER="1")
    settings = load_settings(REDIS_URL=node, CRM_REDIS_CLUSTER="1", CELERY_BROKER_URL=node)
    assert settings.cache_url == f"redis+cluster://127.0.0.1:{cluster.servers[0].port}"


def test_events_of_tenants_on_every_master_are_applied_end_to_end(
    cr: redis.Redis, cluster: RedisClusterHarness, cluster_subscriber: RunningSubscriber
) -> None:
    # Given tenants whose keys live on three different masters, with cached profiles
    tenants = tenants_on_every_master(cluster)
    for tenant in tenants:
        cr.set(TenantKeys.of(tenant).ref(RefKind.PROFILE, "u1"), "{}")
    # When each gets a cost, a role and a user change
    for n, tenant in enumerate(tenants):
        publish(
            cr,
            tenant,
            "credit-configs",
            "credit-config-changed",
            {"operationCode": "op", "newValue": n},
        )
        publish(cr, tenant, "roles", "role-changed", {"roleId": "r", "permissions": ["crm.*"]})
        publish(
            cr,
            tenant,
            "users",
            "user-changed",
            {"userId": "u1", "status": "active", "roles": ["r"]},
        )
    # Then every change is applied in its tenant's slot (versioned Lua, one round trip each)
    for n, tenant in enumerate(tenants):
        keys = TenantKeys.of(tenant)
        expected = (str(n).encode(), b'["crm.*"]', b'["r"]', 0)
        wait_until(
            lambda keys=keys, expected=expected: (
                (
                    cr.hget(keys.values(DataClass.CREDIT_COSTS), "op"),
                    cr.hget(keys.values(DataClass.ROLES), "r"),
                    cr.hget(keys.values(DataClass.USER_ROLES), "u1"),
                    cr.exists(keys.ref(RefKind.PROFILE, "u1")),  # invalidated
                )
                == expected
            ),
            what=f"{tenant}'s changes",
        )
    assert cluster_subscriber.subscriber.stats["dropped"] == 0


def test_a_preload_and_a_reader_work_against_the_cluster(
    cr: redis.Redis,
    cluster_settings: Any,
    cluster_subscriber: RunningSubscriber,
    wrapper: Any,
) -> None:
    # Given the subscriber's first resync preloaded the sandbox's tenants into the Cluster
    acme = TenantKeys.of("acme")
    wait_until(lambda: cr.hget(acme.meta, "ready") == b"1", timeout=20, what="acme preloaded")
    reader = SmartCRMConsumer("acme", cluster_settings).initialize()
    try:
        # Then a reader answers from it
        assert reader.check_permission("user-456", "crm.leads.create")
        assert not reader.check_permission("user-789", "crm.leads.create")
        assert reader.get_credit_cost("crm.leads.create") == 1
        # And sees an event applied afterwards (the change notification crosses the Cluster)
        publish(
            cr,
            "acme",
            "credit-configs",
            "credit-config-changed",
            {"operationCode": "crm.leads.create", "newValue": 4},
        )
        wait_until(lambda: reader.get_credit_cost("crm.leads.create") == 4, what="the new cost")
        # And a read-through and a credit deduction (multi-key scripts) run in acme's slot
        assert reader.get_user_profile("user-456")["name"] == "Sam Seller"
        charged = reader.deduct_credits("user-456", 5, "cluster-order-1")
        assert charged.remaining == 95
        assert cr.get(acme.balance("user-456")) == b"95"
    finally:
        reader.shutdown()


def test_the_http_api_serves_tenants_on_every_master_through_one_client(
    cr: redis.Redis, cluster: RedisClusterHarness, cluster_settings: Any
) -> None:
    from tests.api_fixtures import LiveServer

    # Given loaded tenants whose keys live on three different masters, each with a balance
    tenants = tenants_on_every_master(cluster)
    store = Store(cr)
    for n, tenant in enumerate(tenants):
        load_snapshot(store, tenant, small_tenant(n + 1))
        cr.set(TenantKeys.of(tenant).balance("user-1"), "50")
    api_keys = ",".join(f"{tenant}:key-{tenant}" for tenant in tenants)
    app = create_app(cluster_settings.model_copy(update={"api_keys": SecretStr(api_keys)}))
    try:
        with LiveServer(app) as client:
            # When the API is asked for each of them
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["tenants"] == dict.fromkeys(tenants, True)
            for n, tenant in enumerate(tenants):
                key = {"X-API-Key": f"key-{tenant}"}
                check = client.get("/api/permissions/check", params=ASK, headers=key)
                assert check.json()["authorized"] is True, check.text
                valid = client.get("/api/credits/validate", params=VALIDATE, headers=key)
                assert (valid.json()["creditCost"], valid.json()["availableCredits"]) == (n + 1, 50)
                lead = client.post(
                    "/api/leads",
                    json=lead_body("user-1"),
                    headers={**key, "Idempotency-Key": f"cluster-{tenant}"},
                )
                # Then every answer comes from that tenant's slot, scripts included
                assert lead.status_code == 201, lead.text
                assert lead.json()["remainingCredits"] == 50 - (n + 1)
            # And a change applied on any master reaches the API's near-cache
            for n, tenant in enumerate(tenants):
                apply_cost(store, tenant, LEAD, 10 + n)
            for n, tenant in enumerate(tenants):
                key = {"X-API-Key": f"key-{tenant}"}
                wait_until(
                    lambda key=key, n=n: (
                        client.get("/api/credits/validate", params=VALIDATE, headers=key).json()[
                            "creditCost"
                        ]
                        == 10 + n
                    ),
                    what=f"{tenant}'s new cost",
                )
            # ... all through the one client of the process
            assert app.state.service.cache.tenants() == sorted(tenants)
    finally:
        app.state.service.close()
