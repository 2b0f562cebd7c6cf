"""Concurrent requests through the real HTTP stack (uvicorn on loopback): no overdraft, one
charge per Idempotency-Key, and deductions that fail closed when Redis is down."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import redis

from crmcache.keyspace import TenantKeys
from crmcache.preload import preload_tenant
from crmcache.redis_client import make_redis
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from ops.dev.redis_server import RedisServer
from tests.api_support import ACME, lead_body
from tests.conftest import wait_until

pytest_plugins = ("tests.api_fixtures",)

KEYS = TenantKeys.of("acme")


async def post_leads(url: str, keys: list[str], body: Any = None) -> list[httpx.Response]:
    """POST a lead per key, all at once (up to 64 connections in flight)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/api/leads",
                    json=body or lead_body(),
                    headers={**ACME, "Idempotency-Key": key},
                )
                for key in keys
            )
        )


def test_200_concurrent_leads_against_100_credits_create_exactly_100(
    serve: Any, preload: Any, r: redis.Redis, lead_store: Any, worker: Any
) -> None:
    # Given acme ready and user-456 with 100 credits
    preload("acme")
    r.set(KEYS.balance("user-456"), "100")
    server = serve()

    # When 200 one-credit leads are posted concurrently over HTTP
    with server:
        responses = asyncio.run(post_leads(server.url, [f"conc-{i}" for i in range(200)]))

    # Then exactly 100 were created, the other 100 refused with 402, and the balance is 0
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 100 + [402] * 100
    remaining = sorted(
        res.json()["remainingCredits"] for res in responses if res.status_code == 201
    )
    assert remaining == list(range(100))
    assert r.get(KEYS.balance("user-456")) == b"0"
    assert lead_store.count("acme") == lead_store.count("acme", charged=True) == 100
    # And the 100 charges are settled here: a settle task left queued would report them to the
    # Wrapper during the next test, after its reset (session fixtures, the worker, start first)
    wait_until(lambda: r.xlen(KEYS.credit_outbox) == 0, timeout=60, what="outbox drained")


def test_the_same_key_ten_times_some_concurrently_is_one_lead_and_one_charge(
    serve: Any, preload: Any, r: redis.Redis, wrapper: Any, worker: Any, lead_store: Any
) -> None:
    # Given acme ready (user-456 has 100 credits at the Wrapper)
    preload("acme")
    server = serve()

    # When the same lead is posted 3 times in a row, then 7 times at once
    with server:
        sequential = [asyncio.run(post_leads(server.url, ["same-key"]))[0] for _ in range(3)]
        concurrent = asyncio.run(post_leads(server.url, ["same-key"] * 7))

    # Then every answer is the first one, and one lead and one charge exist
    answers = [response.json() for response in sequential + concurrent]
    assert all(response.status_code == 201 for response in sequential + concurrent)
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["remainingCredits"] == 99
    assert lead_store.count("acme") == 1 and r.get(KEYS.balance("user-456")) == b"99"
    # And the Wrapper is charged once
    wait_until(lambda: wrapper.consumed, timeout=15, what="settlement")
    wait_until(lambda: r.xlen(KEYS.credit_outbox) == 0, timeout=10, what="outbox drained")
    assert len(wrapper.consumed) == 1
    assert wrapper.state.credits("acme", "user-456")["available"] == 99


def test_leads_fail_closed_with_503_when_redis_is_down(
    serve: Any, api_settings: Any, wrapper: Any
) -> None:
    # Given an API on its own Redis, with acme ready and one lead created
    with RedisServer() as own:
        own_settings = api_settings.model_copy(update={"redis_url": own.url})
        client = WrapperClient(own_settings)
        own_redis = make_redis(own.url)
        preload_tenant(Store(own_redis), client, "acme")
        client.close()
        server = serve(own_settings)
        with server as api:
            headers = {**ACME, "Idempotency-Key": "down-1"}
            assert api.post("/api/leads", json=lead_body(), headers=headers).status_code == 201

            # When Redis goes down
            own.stop()
            response = api.post(
                "/api/leads", json=lead_body(), headers={**ACME, "Idempotency-Key": "down-2"}
            )

        # Then the deduction is refused with a JSON 503, not charged anywhere
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "cache_unavailable"
        assert response.json()["message"]
        own_redis.close()
