"""Reference reads: read-through with leases (one upstream fetch per key across threads and
processes), no stale write after an invalidation, stale-if-error, negative caching, balances."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Any

import redis

from consumer import SmartCRMConsumer
from crmcache.events import parse_envelope
from crmcache.keyspace import RefKind, TenantKeys
from crmcache.store import Store
from crmcache.tokens import parse_token, version_token
from tests.conftest import wait_until
from tests.reader_helpers import child_result, preload, reader, run_in_child
from tests.tcp_proxy import TcpProxy

KEYS = TenantKeys.of("acme")
PROFILE_PATH = ("GET", "/api/users/user-456/profile")


def test_fifty_threads_missing_one_profile_make_one_upstream_request(
    wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    # Given a slow Wrapper, so that every thread misses while the first fetch is in flight
    wrapper.set_fault(delay=0.3, path_prefix="/api/users/user-456/profile")
    results: list[Any] = []
    with reader(settings) as crm:
        barrier = threading.Barrier(50)

        def read() -> None:
            barrier.wait()
            results.append(crm.get_user_profile_detail("user-456"))

        # When 50 threads ask for the same uncached profile at once
        threads = [threading.Thread(target=read) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    # Then the Wrapper was asked once, and every thread got the profile
    assert wrapper.requests[PROFILE_PATH] == 1
    assert len(results) == 50
    assert {r.value["name"] for r in results} == {"Sam Seller"}
    assert sum(1 for r in results if r.source == "wrapper") == 1


def test_four_processes_missing_one_profile_make_one_upstream_request(
    wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    # Given a slow Wrapper and four forked processes, each with its own reader and 5 threads
    wrapper.set_fault(delay=0.5, path_prefix="/api/users/user-456/profile")
    go_read, go_write = os.pipe()
    reader_settings = settings.model_copy(update={"reader_requests_preload": False})

    def child() -> list[str]:
        os.close(go_write)
        crm = SmartCRMConsumer("acme", reader_settings)
        sources: list[str] = []
        try:
            os.read(go_read, 1)  # wait until every process is ready
            threads = [
                threading.Thread(
                    target=lambda: sources.append(crm.get_user_profile_detail("user-456").source)
                )
                for _ in range(5)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
        finally:
            crm.shutdown()
        return sources

    children = [run_in_child(child) for _ in range(4)]
    os.close(go_read)
    # When they all read the same uncached profile at once
    os.write(go_write, b"go!!")
    os.close(go_write)
    sources = [s for pid, fd in children for s in child_result(pid, fd)]
    # Then the Wrapper was asked exactly once for the 20 readers
    assert len(sources) == 20
    assert wrapper.requests[PROFILE_PATH] == 1
    assert sources.count("wrapper") == 1


def test_an_invalidation_during_a_slow_fetch_is_not_overwritten_by_the_old_value(
    wrapper: Any, settings: Any, subscriber: Any, r: redis.Redis
) -> None:
    # Given a reader whose Wrapper replies are held in flight by a proxy
    proxy = TcpProxy(wrapper.port)
    try:
        proxied = settings.model_copy(update={"wrapper_api_url": f"http://127.0.0.1:{proxy.port}"})
        with reader(proxied) as crm:
            proxy.hold("down")
            answer: list[Any] = []
            fetch = threading.Thread(
                target=lambda: answer.append(crm.get_user_profile_detail("user-456"))
            )
            fetch.start()
            wait_until(lambda: wrapper.requests[PROFILE_PATH] == 1, what="the first fetch")
            # When the profile changes (user-changed -> subscriber -> worker invalidates the
            # entry and its lease) while the old profile is still on its way back
            wrapper.set_user("acme", "user-456", profile={"name": "Sam Renamed"})
            wait_until(
                lambda: not r.exists(KEYS.lease(RefKind.PROFILE, "user-456")),
                what="the invalidation taking the lease",
            )
            proxy.release()
            fetch.join(timeout=10)
    finally:
        proxy.close()
    # Then the old value was not written back: the fill was refused, the reader asked again,
    # and both the answer and the cache hold the new profile
    assert wrapper.requests[PROFILE_PATH] == 2
    assert answer[0].value["name"] == "Sam Renamed"
    assert b"Sam Renamed" in r.hget(KEYS.ref(RefKind.PROFILE, "user-456"), "value")


def test_wrapper_down_serves_stale_values_flagged_and_the_breaker_opens_and_closes(
    wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    with reader(settings, profile_ttl=1, lease_error_ttl_ms=0) as crm:
        # Given a cached profile that has expired
        first = crm.get_user_profile_detail("user-456")
        time.sleep(1.05)
        # When the Wrapper goes down
        wrapper.set_down(True)
        answers = [crm.get_user_profile_detail("user-456") for _ in range(3)]
        # Then the last value is served, flagged stale, and the breaker opens after 3 failures
        assert all(a.stale and a.value == first.value for a in answers)
        assert all(a.age_ms >= 1000 for a in answers)
        assert crm.get_metrics()["wrapperBreaker"] == "open"
        # ... while open, nobody calls the Wrapper and the stale value is still served
        dropped = sum(wrapper.dropped.values())
        assert crm.get_user_profile_detail("user-456").stale
        assert sum(wrapper.dropped.values()) == dropped
        # ... a profile never cached cannot be served: a typed error
        try:
            crm.get_user_profile("user-123")
            raise AssertionError("expected WrapperUnavailable")
        except Exception as exc:
            assert type(exc).__name__ == "WrapperUnavailable"
        # When the Wrapper is back and the breaker's reset time has passed
        wrapper.set_down(False)
        time.sleep(1.05)
        fresh = crm.get_user_profile_detail("user-456")
        # Then the value is fresh again and the breaker closed
        assert not fresh.stale and fresh.source == "wrapper"
        assert crm.get_metrics()["wrapperBreaker"] == "closed"
        assert crm.get_metrics()["staleResponses"] == 4


def test_a_404_is_cached_as_a_negative_entry(wrapper: Any, settings: Any, r: redis.Redis) -> None:
    with reader(settings) as crm:
        # When an unknown user's profile is asked three times
        answers = [crm.get_user_profile_detail("nobody") for _ in range(3)]
    # Then the Wrapper was asked once and every answer says "not found"
    assert wrapper.requests[("GET", "/api/users/nobody/profile")] == 1
    assert [a.found for a in answers] == [False, False, False]
    assert [a.cached for a in answers] == [False, True, True]


def test_balance_is_read_through_once_and_never_overwritten(
    wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    # Given a balance already kept in Redis for user-123 (by deductions)
    r.set(KEYS.balance("user-123"), "42")
    with reader(settings) as crm:
        # When balances are read
        kept = crm.get_user_credits_detail("user-123")
        fetched = crm.get_user_credits_detail("user-456")
        wrapper.top_up_credits("acme", "user-456", 50, publish=False)
        again = crm.get_user_credits_detail("user-456")
        unknown = crm.get_user_credits_detail("nobody")
    # Then the existing balance is used as is, the missing one is fetched once and stored
    # without a TTL, and a later Wrapper change does not overwrite what Redis keeps
    assert kept.value == 42 and kept.cached
    assert wrapper.requests[("GET", "/api/users/user-123/credits")] == 0
    assert (fetched.value, fetched.source, again.value, again.source) == (
        100,
        "wrapper",
        100,
        "redis",
    )
    assert r.get(KEYS.balance("user-456")) == b"100"
    assert r.ttl(KEYS.balance("user-456")) == -1
    assert wrapper.requests[("GET", "/api/users/user-456/credits")] == 1
    assert not unknown.found


def test_cache_expiry_says_when_a_reference_entry_stops_being_fresh(
    wrapper: Any, settings: Any, r: redis.Redis
) -> None:
    with reader(settings) as crm:
        # Given a profile and a hierarchy node read through
        crm.get_user_profile("user-456")
        crm.get_hierarchy("team-sales")
        now = time.time()
        # Then their expiry is their TTL from now; balances and unknown keys have none
        profile_expiry = crm.get_cache_expiry("user:user-456")
        assert profile_expiry is not None
        assert abs(profile_expiry - (now + settings.profile_ttl)) < 2
        assert crm.get_cache_expiry("profile:user-456") == profile_expiry
        hierarchy_expiry = crm.get_cache_expiry("hierarchy:team-sales")
        assert hierarchy_expiry is not None
        assert abs(hierarchy_expiry - (now + settings.hierarchy_ttl)) < 2
        assert crm.get_cache_expiry("profile:user-123") is None
        assert crm.get_cache_expiry("credits:user-456") is None
        try:
            crm.get_cache_expiry("bogus")
            raise AssertionError("expected ValueError")
        except ValueError:
            pass


def test_reference_answers_carry_the_version_they_were_read_or_filled_at(
    wrapper: Any, settings: Any, r: redis.Redis, store: Store
) -> None:
    def current() -> str:
        epoch, version = r.hmget(KEYS.meta, ["epoch", "version"])
        return version_token(epoch, version)

    preload(store, settings)
    with reader(settings) as crm:
        # Given a profile filled from the Wrapper, then read from Redis: both at the version
        filled = crm.get_user_profile_detail("user-456")
        cached = crm.get_user_profile_detail("user-456")
        assert (filled.source, cached.source) == ("wrapper", "redis")
        assert filled.token == cached.token == current() != ""
        # When an event invalidates the profile (its batch bumps the version)
        envelope = {"eventType": "user-changed", "data": {"userId": "user-456", "status": "active"}}
        seq = int(r.incr(KEYS.seq))
        written = store.apply_events(
            "acme", [replace(parse_envelope("acme", "users", envelope), seq=seq)]
        )
        # Then the next answer is at or past the write's token, and so is a balance's
        after = crm.get_user_profile_detail("user-456")
        assert after.source == "wrapper"
        assert parse_token(after.token).version >= parse_token(written.token).version
        assert crm.get_user_credits_detail("user-456").token == current()
