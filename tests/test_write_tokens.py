"""Every write names the version it produced: an applied batch, a preload and a deduction each
return the consistency token (crmcache/tokens.py) of the tenant's data as they left it, against
a real Redis and the sandbox Wrapper."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from crmcache import credits
from crmcache.events import parse_envelope
from crmcache.keyspace import TenantKeys
from crmcache.preload import preload_tenant
from crmcache.store import Store
from crmcache.tokens import VersionToken, parse_token
from crmcache.wrapper import WrapperClient

ACME = TenantKeys.of("acme")


@pytest.fixture
def client(settings: Any, wrapper: Any) -> Iterator[WrapperClient]:
    wrapper_client = WrapperClient(settings)
    yield wrapper_client
    wrapper_client.close()


def meta_token(r: redis.Redis) -> VersionToken:
    epoch, version = r.hmget(ACME.meta, "epoch", "version")
    assert epoch is not None
    return VersionToken(epoch.decode(), int(version or 0))


def suspend(user: str, seq: int) -> Any:
    envelope = {"eventType": "user-changed", "data": {"userId": user, "status": "suspended"}}
    return replace(parse_envelope("acme", "users", envelope), seq=seq)


def test_an_applied_batch_returns_the_token_of_the_version_it_made(
    r: redis.Redis, store: Store
) -> None:
    # A tenant nobody read or preloaded yet has no epoch: the batch makes one.
    first = store.apply_events("acme", [suspend("u1", 1)])
    assert parse_token(first.token) == meta_token(r)
    second = store.apply_events("acme", [suspend("u2", 2)])
    assert parse_token(second.token) == meta_token(r)
    assert parse_token(second.token).version == parse_token(first.token).version + 1


def test_a_preload_returns_the_token_of_the_ready_data(
    r: redis.Redis, store: Store, client: WrapperClient
) -> None:
    report = preload_tenant(store, client, "acme")
    assert report.token and parse_token(report.token) == meta_token(r)
    assert report.as_dict()["token"] == report.token


def test_a_deduction_and_its_replay_return_the_charge_s_token(
    r: redis.Redis, store: Store, client: WrapperClient
) -> None:
    r.set(ACME.balance("user-456"), "10")
    charged = credits.deduct(
        store, client, "acme", user_id="user-456", operation="op", amount=2, idempotency_key="k"
    )
    assert parse_token(charged.token) == meta_token(r)
    store.apply_events("acme", [suspend("u1", 1)])  # the tenant moves on
    replayed = credits.deduct(
        store, client, "acme", user_id="user-456", operation="op", amount=2, idempotency_key="k"
    )
    assert replayed.replayed and replayed.token == charged.token
