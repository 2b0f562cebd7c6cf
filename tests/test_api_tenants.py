"""The HTTP API serving many tenants from one process: readiness of every tenant its keys name
in one Redis round trip, and one read client for all of them."""

from __future__ import annotations

import threading
from typing import Any

import redis
from pydantic import SecretStr

from consumer.api import create_app
from crmcache.keyspace import TenantKeys
from tests.conftest import wait_until
from tests.reader_helpers import command_calls
from tests.tcp_proxy import TcpProxy

TENANTS = [f"api{i}" for i in range(200)]


def many_tenant_settings(settings: Any, redis_url: str) -> Any:
    keys = ",".join(f"{tenant}:key-{tenant}" for tenant in TENANTS)
    update = {"api_keys": SecretStr(keys), "redis_url": redis_url, "reader_requests_preload": False}
    return settings.model_copy(update=update)


def test_readiness_of_200_tenants_is_one_round_trip(
    settings: Any, r: redis.Redis, redis_server: Any
) -> None:
    from tests.api_fixtures import LiveServer

    # Given an API whose keys name 200 tenants, every other one ready, reaching Redis through a
    # proxy that can hold Redis's replies
    for tenant in TENANTS[::2]:
        r.hset(TenantKeys.of(tenant).meta, "ready", "1")
    proxy = TcpProxy(redis_server.port)
    app = create_app(many_tenant_settings(settings, proxy.url))
    try:
        with LiveServer(app) as client:
            assert client.get("/readyz").status_code == 503  # connected; half not ready
            before = command_calls(r, "hget")
            answers: list[Any] = []
            # When /readyz is asked while no reply from Redis can come back
            proxy.hold("down")
            asking = threading.Thread(target=lambda: answers.append(client.get("/readyz")))
            asking.start()
            # Then Redis has every tenant's question before the first answer: one round trip
            wait_until(
                lambda: command_calls(r, "hget") - before == len(TENANTS),
                timeout=5,
                what="all 200 questions in flight at once",
            )
            proxy.release()
            asking.join(timeout=10)
        body = answers[0].json()
        assert body["redis"] is True
        assert body["tenants"] == {t: i % 2 == 0 for i, t in enumerate(TENANTS)}
    finally:
        proxy.release()
        app.state.service.close()
        proxy.close()


def test_every_tenant_of_the_api_is_served_by_one_read_client(
    settings: Any, r: redis.Redis
) -> None:
    # Given an API naming 200 tenants
    app = create_app(many_tenant_settings(settings, settings.cache_url))
    service = app.state.service
    try:
        # When each tenant's reader is asked for
        readers = [service.readers.get(tenant) for tenant in TENANTS]
        # Then they are views over the API's one client
        assert {id(reader.cache) for reader in readers} == {id(service.cache)}
        assert service.cache.tenants() == sorted(TENANTS)
    finally:
        service.close()
