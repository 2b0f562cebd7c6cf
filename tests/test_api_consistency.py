"""Consistency per request over HTTP (consumer/api/consistency.py), against a live server and a
real Redis: every critical answer carries its token (JSON and ``X-CRM-Token``), whether the
in-front hot path or a route answered; ``fully_consistent`` skips the near-cache;
``at_least_as_fresh`` answers only from data at or past the token, or says 409 with both tokens
after the bounded wait; a contradictory or malformed request is a 4xx JSON error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis

from crmcache.events import parse_envelope
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.store import Store
from crmcache.tokens import parse_token, version_token
from tests.api_support import ACME
from tests.conftest import wait_until

pytest_plugins = ("tests.api_fixtures",)

KEYS = TenantKeys.of("acme")
USER, PERM = "user-456", "crm.leads.create"
CHECK = f"/api/permissions/check?userId={USER}&permission={PERM}"
VALIDATE = f"/api/credits/validate?operation={PERM}&userId={USER}"


@pytest.fixture
def served(serve: Any, preload: Any, api_settings: Any) -> Iterator[tuple[httpx.Client, Any]]:
    """A live API whose near-cache trusts itself for a minute (only a notification or a
    stronger level makes it look at Redis) and waits 100 ms for a token; and its service."""
    preload("acme")
    settings = api_settings.model_copy(
        update={"near_cache_staleness_ms": 60_000, "consistency_wait_ms": 100}
    )
    server = serve(settings)
    service = server.server.config.app.state.service
    with server as http:

        def held() -> bool:
            # the reader is built, and its near-cache holds the user's access (what the hot
            # path answers from)
            http.get(CHECK, headers=ACME)
            reader = service.readers.peek("acme")
            return reader is not None and reader.peek_permission_detail(USER, PERM) is not None

        wait_until(held, what="a warm reader")
        yield http, service


@pytest.fixture
def client(served: tuple[httpx.Client, Any]) -> httpx.Client:
    return served[0]


def current_token(r: redis.Redis) -> str:
    meta = r.hmget(KEYS.meta, ["epoch", "version"])
    return version_token(meta[0], int(meta[1] or 0))


def silently_suspend(r: redis.Redis) -> None:
    """A change in Redis with a new version but no notification (a PUBLISH lost on the way)."""
    r.hset(KEYS.values(DataClass.USER_STATUS), USER, "suspended")
    r.hincrby(KEYS.meta, "version", 1)


def suspend(store: Store, upstream_seq: int) -> str:
    envelope = {
        "eventType": "user-changed",
        "seq": upstream_seq,
        "data": {"userId": USER, "status": "suspended"},
    }
    seq = int(store.redis.incr(KEYS.seq))
    event = replace(parse_envelope("acme", "users", envelope), seq=seq)
    return store.apply_events("acme", [event]).token


@pytest.mark.parametrize("path", [CHECK, VALIDATE])
def test_every_critical_answer_carries_the_token_of_its_data(
    client: httpx.Client, r: redis.Redis, path: str
) -> None:
    # Given the hot path (near-cache) and a route (fully_consistent) answering the same read
    for url in (path, f"{path}&consistency=fully_consistent"):
        answer = client.get(url, headers=ACME)
        # Then both carry the token of the tenant's current data, in the JSON and the header
        assert answer.status_code == 200, answer.text
        assert answer.json()["token"] == answer.headers["X-CRM-Token"] == current_token(r)


def test_fully_consistent_skips_the_near_cache(client: httpx.Client, r: redis.Redis) -> None:
    # Given a suspension in Redis that the API's near-cache did not hear of
    before = current_token(r)
    silently_suspend(r)
    # Then the default level still answers from the near-cache (trusted for a minute)
    default = client.get(CHECK, headers=ACME).json()
    assert (default["authorized"], default["token"]) == (True, before)
    # And fully_consistent (query or header) reads Redis: denied, at the new version
    for url, headers in (
        (f"{CHECK}&consistency=fully_consistent", ACME),
        (CHECK, {**ACME, "X-CRM-Consistency": "fully_consistent"}),
    ):
        strict = client.get(url, headers=headers)
        assert strict.status_code == 200, strict.text
        assert (strict.json()["authorized"], strict.json()["token"]) == (False, current_token(r))


def test_at_least_as_fresh_answers_from_data_at_or_past_the_token(
    client: httpx.Client, r: redis.Redis, store: Store
) -> None:
    old = current_token(r)
    # Given a suspension applied with the Wrapper's seq 7 (its notification may not be heard yet)
    written = suspend(store, upstream_seq=7)
    # Then a read at least as fresh as the write, as the seq, or as the user stream's seq 7,
    # in each of the three syntaxes, denies
    for url, headers in (
        (f"{CHECK}&consistency=at_least_as_fresh:{written}", ACME),
        (f"{CHECK}&token=users:7", ACME),
        (f"{CHECK}&consistency=at_least_as_fresh&token={written}", ACME),
        (CHECK, {**ACME, "X-CRM-Consistency": "at_least_as_fresh:users:7"}),
    ):
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200, (url, answer.text)
        body = answer.json()
        assert body["authorized"] is False, url
        assert parse_token(body["token"]).version >= parse_token(written).version
    # And an older token is satisfied too (by whatever is at or past it)
    answer = client.get(f"{CHECK}&token={old}", headers=ACME)
    assert answer.status_code == 200 and answer.json()["authorized"] is False


def test_a_token_not_reached_in_time_is_a_409_with_both_tokens(
    client: httpx.Client, r: redis.Redis
) -> None:
    ahead = parse_token(current_token(r))
    wanted = f"v1.{ahead.epoch}.{ahead.version + 100}"
    for url in (f"{CHECK}&token={wanted}", f"{VALIDATE}&token=users:99"):
        started = time.monotonic()
        answer = client.get(url, headers=ACME)
        # Then the answer waited for the bound (100 ms) and refuses, naming both tokens
        assert time.monotonic() - started >= 0.1
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["error"] == "token_not_reached"
        assert body["token"] == url.rpartition("token=")[2]
        assert body["current"] == current_token(r)


def test_a_strong_read_of_a_balance_skips_the_near_cache(
    served: tuple[httpx.Client, Any], r: redis.Redis
) -> None:
    client, service = served
    # Given the balance held by the API's near-cache (an answer from Redis offers it)
    first = client.get(VALIDATE, headers=ACME).json()

    def held() -> bool:
        client.get(VALIDATE, headers=ACME)
        return service.readers.peek("acme").peek_user_credits(USER) is not None

    wait_until(held, what="a held balance")
    # When the balance changes in Redis without the version moving (no one told the API)
    r.set(KEYS.balance(USER), str(first["availableCredits"] + 1000))
    # Then the default answer is the held one, and a strong read the one in Redis
    assert (
        client.get(VALIDATE, headers=ACME).json()["availableCredits"] == first["availableCredits"]
    )
    strict = client.get(f"{VALIDATE}&consistency=fully_consistent", headers=ACME).json()
    assert strict["availableCredits"] == first["availableCredits"] + 1000


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("consistency=sometimes", {}, 422),
        ("token=users:abc", {}, 422),
        ("consistency=at_least_as_fresh", {}, 400),
        ("consistency=fully_consistent&token=users:1", {}, 400),
        ("consistency=at_least_as_fresh:users:1&token=users:2", {}, 400),
        ("", {"X-CRM-Consistency": "not-a-level"}, 400),
        ("", {"X-CRM-Consistency": "at_least_as_fresh:v1.x"}, 400),
        ("consistency=minimize_latency", {"X-CRM-Consistency": "fully_consistent"}, 400),
    ],
)
def test_a_malformed_or_contradictory_level_is_a_4xx_json_error(
    client: httpx.Client, query: str, headers: dict[str, str], status: int
) -> None:
    for path in (CHECK, VALIDATE):
        answer = client.get(f"{path}&{query}" if query else path, headers={**ACME, **headers})
        assert answer.status_code == status, answer.text
        body = json.loads(answer.text)
        assert body["error"] == ("invalid_consistency" if status == 400 else "invalid_request")


def test_a_profile_carries_the_token_it_was_cached_at(client: httpx.Client, r: redis.Redis) -> None:
    for _ in range(2):  # filled from the Wrapper, then from Redis
        answer = client.get(f"/api/users/{USER}/profile", headers=ACME)
        assert answer.status_code == 200, answer.text
        assert answer.json()["token"] == answer.headers["X-CRM-Token"] == current_token(r)
