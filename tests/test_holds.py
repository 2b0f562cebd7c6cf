"""Credit holds (crmcache.holds + credit_holds.lua) against a real Redis: reserve, commit,
void, deadlines kept by Redis, replays, never negative, conserved."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from crmcache import holds
from crmcache.errors import HoldClosed, IdempotencyConflict, InsufficientCredits
from crmcache.keyspace import OUTBOX_GROUP, TenantKeys
from crmcache.store import Store
from crmcache.wrapper import WrapperClient

pytest_plugins = ("tests.api_fixtures",)

ACME = TenantKeys.of("acme")
USER = "user-456"
TTL = 86_400


@pytest.fixture
def wrapper_client(settings: Any, wrapper: Any) -> Iterator[WrapperClient]:
    client = WrapperClient(settings)
    yield client
    client.close()


def reserve(store: Store, client: WrapperClient, key: str, **overrides: Any) -> holds.Hold:
    kwargs: dict[str, Any] = {
        "user_id": USER,
        "operation": "crm.leads.create",
        "amount": 1,
        "timeout_s": 30,
        "ttl_s": TTL,
    }
    kwargs.update(overrides)
    return holds.reserve(store, client, "acme", idempotency_key=key, **kwargs)


def pass_deadline(r: redis.Redis, hold_id: str, user: str = USER) -> None:
    """As if the hold's deadline had passed: its score in the user's deadlines goes to 1 ms."""
    r.zadd(ACME.hold_deadlines(user), {hold_id: 1})


def test_a_reservation_moves_credits_from_available_to_held(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given 10 credits
    r.set(ACME.balance(USER), "10")

    # When 3 are reserved
    hold = reserve(store, wrapper_client, "h-1", amount=3)

    # Then 7 are available and 3 held, nothing is charged yet
    assert (hold.amount, hold.available, hold.available_before, hold.replayed) == (3, 7, 10, False)
    assert holds.balance(store, "acme", USER) == (7, 3)
    assert not r.exists(ACME.credit_outbox)
    assert holds.hold_status(store, "acme", hold.hold_id, ttl_s=TTL)["state"] == "held"


def test_a_commit_charges_through_the_outbox_and_a_second_commit_replays(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a hold of 3 out of 10
    r.set(ACME.balance(USER), "10")
    hold = reserve(store, wrapper_client, "h-2", amount=3)

    # When it is committed twice with the same result
    first = holds.commit(store, "acme", hold.hold_id, "lead-9", ttl_s=TTL)
    again = holds.commit(store, "acme", hold.hold_id, "lead-9", ttl_s=TTL)

    # Then one outbox entry of 3 (the settler's), nothing held, 7 available
    [(_, entry)] = r.xrange(ACME.credit_outbox)
    assert entry[b"amount"] == b"3" and entry[b"deductionId"] == first.deduction_id.encode()
    assert entry[b"leadId"] == b"lead-9" and entry[b"holdId"] == hold.hold_id.encode()
    assert r.xinfo_groups(ACME.credit_outbox)[0]["name"] == OUTBOX_GROUP.encode()
    assert (again.replayed, again.deduction_id) == (True, first.deduction_id)
    assert first.settle_now and not again.settle_now
    assert holds.balance(store, "acme", USER) == (7, 0)
    # And another result for the same hold is a conflict; a void comes too late
    with pytest.raises(IdempotencyConflict):
        holds.commit(store, "acme", hold.hold_id, "lead-other", ttl_s=TTL)
    with pytest.raises(HoldClosed) as closed:
        holds.void(store, "acme", hold.hold_id, ttl_s=TTL)
    assert closed.value.state == "committed"


def test_a_void_gives_the_credits_back_once(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    r.set(ACME.balance(USER), "10")
    hold = reserve(store, wrapper_client, "h-3", amount=4)

    assert holds.void(store, "acme", hold.hold_id, ttl_s=TTL) == 10
    assert holds.void(store, "acme", hold.hold_id, ttl_s=TTL) is None  # no-op

    assert holds.balance(store, "acme", USER) == (10, 0)
    with pytest.raises(HoldClosed) as closed:
        holds.commit(store, "acme", hold.hold_id, ttl_s=TTL)
    assert closed.value.state == "voided"
    assert not r.exists(ACME.credit_outbox)


def test_the_same_key_replays_the_first_hold_and_another_request_conflicts(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    r.set(ACME.balance(USER), "10")
    first = reserve(store, wrapper_client, "h-same")
    with ThreadPoolExecutor(8) as pool:
        replays = list(pool.map(lambda _: reserve(store, wrapper_client, "h-same"), range(8)))

    assert all(h.replayed and h.hold_id == first.hold_id and h.available == 9 for h in replays)
    assert holds.balance(store, "acme", USER) == (9, 1)
    with pytest.raises(IdempotencyConflict):
        reserve(store, wrapper_client, "h-same", amount=2)


def test_a_hold_past_its_deadline_is_voided_by_the_users_next_action(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a hold whose process died (1 s timeout), and nothing else happening
    r.set(ACME.balance(USER), "10")
    hold = reserve(store, wrapper_client, "h-dead", amount=5, timeout_s=1)
    assert r.zscore(ACME.hold_users, USER) == hold.deadline_ms

    # When its deadline passes on Redis's clock and the user reserves something else
    time.sleep(1.1)
    other = reserve(store, wrapper_client, "h-next", amount=1)

    # Then the dead hold's credits came back before the new hold took its own
    assert other.available == 9
    assert holds.balance(store, "acme", USER) == (9, 1)
    assert holds.hold_status(store, "acme", hold.hold_id, ttl_s=TTL)["state"] == "expired"
    with pytest.raises(HoldClosed) as closed:
        holds.commit(store, "acme", hold.hold_id, ttl_s=TTL)
    assert closed.value.state == "expired"


def test_an_expired_key_may_reserve_anew(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    r.set(ACME.balance(USER), "10")
    first = reserve(store, wrapper_client, "h-again", amount=2)
    pass_deadline(r, first.hold_id)

    second = reserve(store, wrapper_client, "h-again", amount=2)

    assert not second.replayed and second.hold_id != first.hold_id
    assert holds.balance(store, "acme", USER) == (8, 2)


def test_a_hold_waiting_on_a_result_is_left_to_the_reconciler(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a hold for a lead about to be written, past its deadline
    r.set(ACME.balance(USER), "10")
    hold = reserve(store, wrapper_client, "h-lead", amount=2, result_ref="lead_1")
    pass_deadline(r, hold.hold_id)
    r.zadd(ACME.hold_users, {USER: 1})

    # When the user acts, then the hold stays (only the database knows if the lead exists)
    reserve(store, wrapper_client, "h-other", amount=1)
    assert holds.balance(store, "acme", USER) == (7, 3)
    # And the reconciler's sweep names it; it may still be committed with its lead
    assert holds.due_users(store, "acme") == [USER]
    [waiting] = holds.sweep(store, "acme", USER)
    assert (waiting.hold_id, waiting.result_ref, waiting.idempotency_key) == (
        hold.hold_id,
        "lead_1",
        "h-lead",
    )
    with pytest.raises(IdempotencyConflict):
        holds.commit(store, "acme", hold.hold_id, "lead_2", ttl_s=TTL)
    assert not holds.commit(store, "acme", hold.hold_id, "lead_1", ttl_s=TTL).replayed


def test_the_reconcilers_sweep_voids_the_holds_of_a_user_nobody_touches(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    r.set(ACME.balance(USER), "10")
    hold = reserve(store, wrapper_client, "h-idle", amount=6)
    pass_deadline(r, hold.hold_id)
    r.zadd(ACME.hold_users, {USER: 1})

    assert holds.sweep(store, "acme", USER) == []

    assert r.get(ACME.balance(USER)) == b"10"
    assert not r.exists(ACME.holds(USER), ACME.hold_deadlines(USER))
    assert r.zscore(ACME.hold_users, USER) is None


def test_insufficient_credits_hold_nothing(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    r.set(ACME.balance(USER), "2")
    with pytest.raises(InsufficientCredits):
        reserve(store, wrapper_client, "h-poor", amount=3)
    assert holds.balance(store, "acme", USER) == (2, 0)
    assert not r.exists(ACME.idempotency("h-poor"))


def test_a_missing_balance_is_read_through_before_reserving(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    hold = reserve(store, wrapper_client, "h-rt", amount=1)  # the sandbox says 100
    assert hold.available == 99


def test_crossing_below_the_low_balance_threshold_is_published_once(
    r: redis.Redis, serve: Any, preload: Any, api_settings: Any
) -> None:
    from tests.api_support import ACME as ACME_KEY

    # Given acme alerts below 3 credits and user-456 holds 4
    preload("acme")
    r.set(ACME.balance(USER), "4")
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ACME.credits_low_channel)
    pubsub.get_message(timeout=1)
    low = api_settings.model_copy(update={"credits_low_threshold": "10,acme:3"})
    with serve(low) as api:
        # When three 1-credit reservations are made (4 -> 3 -> 2 -> 1)
        for i in range(3):
            body = {"userId": USER, "operation": "crm.leads.create"}
            reply = api.post(
                "/api/credits/reservations",
                json=body,
                headers={**ACME_KEY, "Idempotency-Key": f"low-{i}"},
            )
            assert reply.status_code == 201, reply.text
        metrics = api.get("/metrics").text

    # Then one alert, for the crossing 3 -> 2, and one count in Prometheus
    message = pubsub.get_message(timeout=2)
    assert message is not None
    assert json.loads(message["data"]) == {"userId": USER, "available": 2, "threshold": 3.0}
    assert pubsub.get_message(timeout=0.3) is None
    assert 'crmcache_credits_low_total{tenant="acme"} 1.0' in metrics
    pubsub.close()


def test_1000_concurrent_reservations_on_500_credits_grant_exactly_500(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given 500 credits and a watcher sampling the balance throughout
    r.set(ACME.balance(USER), "500")
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(float(r.get(ACME.balance(USER)) or 0))

    watcher = threading.Thread(target=watch)
    watcher.start()

    # When 1,000 one-credit reservations race on 16 threads
    def attempt(i: int) -> holds.Hold | None:
        try:
            return reserve(store, wrapper_client, f"h-race-{i}")
        except InsufficientCredits:
            return None

    try:
        with ThreadPoolExecutor(16) as pool:
            granted = [h for h in pool.map(attempt, range(1000)) if h is not None]
    finally:
        done.set()
        watcher.join()

    # Then exactly 500 were granted, each saw a distinct balance, and it never went below 0
    assert len(granted) == 500
    assert sorted(h.available for h in granted) == list(range(500))
    assert holds.balance(store, "acme", USER) == (0, 500)
    assert min(seen) >= 0 and len(seen) > 10

    # And voiding all of them restores 500
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda h: holds.void(store, "acme", h.hold_id, ttl_s=TTL), granted))
    assert holds.balance(store, "acme", USER) == (500, 0)
    assert r.get(ACME.balance(USER)) == b"500"
