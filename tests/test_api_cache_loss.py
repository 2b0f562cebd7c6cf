"""The HTTP API when Redis lost its data: "unavailable" (503), never "not found" (404).

The reader reaches Redis through a proxy that is cut, as a reader is right after a Redis
restart until its probe finds Redis again, while the API's own store reaches the emptied Redis.
"""

from __future__ import annotations

from typing import Any

import redis

from consumer import SmartCRMConsumer
from consumer.api import create_app
from crmcache.keyspace import TenantKeys
from tests.api_support import ACME, lead_body
from tests.tcp_proxy import TcpProxy

pytest_plugins = ("tests.api_fixtures",)

KEYS = TenantKeys.of("acme")


def test_a_lead_whose_balance_redis_lost_is_503_never_404(
    api_settings: Any, preload: Any, r: redis.Redis, redis_server: Any
) -> None:
    from tests.api_fixtures import LiveServer  # a plugin of this module: imported by then

    # Given a ready tenant and an API whose reader holds the lead's cost and permission
    preload()
    proxy = TcpProxy(redis_server.port)
    reader_settings = api_settings.model_copy(update={"redis_url": proxy.url})
    app = create_app(
        api_settings,
        reader_factory=lambda tenant, _: SmartCRMConsumer(tenant, settings=reader_settings),
    )
    try:
        with LiveServer(app) as client:
            first = client.post(
                "/api/leads", json=lead_body(), headers={**ACME, "Idempotency-Key": "k-1"}
            )
            assert first.status_code == 201, first.text
            # When Redis loses its data and the reader cannot reach it yet
            proxy.close()
            r.flushdb()
            reply = client.post(
                "/api/leads", json=lead_body(), headers={**ACME, "Idempotency-Key": "k-2"}
            )
        # Then the lead is refused as "unavailable", not "no such user", and nothing is charged
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "cache_unavailable"
        # (a settlement of the first lead, run by a worker after the flush, may leave an empty
        # outbox stream behind: no entry in it is a charge)
        assert r.exists(KEYS.balance("user-456")) == 0
        assert r.xlen(KEYS.credit_outbox) == 0
    finally:
        app.state.service.close()
