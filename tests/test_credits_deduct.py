"""Deductions (crmcache.credits + deduct_credits.lua) against a real Redis and the sandbox
Wrapper: atomic, never negative, charged once per idempotency key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from consumer import SmartCRMConsumer
from crmcache import credits
from crmcache.errors import (
    BalanceUnknown,
    IdempotencyConflict,
    InsufficientCredits,
    StoreUnavailable,
)
from crmcache.keyspace import CREDIT_TENANTS, TenantKeys
from crmcache.redis_client import make_redis
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from ops.dev.redis_server import free_port

ACME = TenantKeys.of("acme")


@pytest.fixture
def wrapper_client(settings: Any, wrapper: Any) -> Iterator[WrapperClient]:
    client = WrapperClient(settings)
    yield client
    client.close()


def deduct(store: Store, client: WrapperClient, key: str, **overrides: Any) -> credits.Deduction:
    kwargs: dict[str, Any] = {"user_id": "user-456", "operation": "crm.leads.create", "amount": 1}
    kwargs.update(overrides)
    return credits.deduct(store, client, "acme", idempotency_key=key, **kwargs)


def outbox(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in r.xrange(ACME.credit_outbox)]


def test_a_deduction_decrements_and_queues_the_settlement(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a cached balance of 10
    r.set(ACME.balance("user-456"), "10")

    # When 3 credits are deducted
    result = deduct(store, wrapper_client, "k-1", amount=3)

    # Then the balance, the outbox entry and the idempotency record all exist (no lead: leads
    # live in the database, see tests/test_leads.py)
    assert (result.amount, result.remaining, result.replayed) == (3, 7, False)
    assert r.get(ACME.balance("user-456")) == b"7"
    assert not r.keys("crm:{acme}:leads*")
    [entry] = outbox(r)
    assert entry[b"deductionId"] == result.deduction_id.encode()
    assert entry[b"amount"] == b"3" and entry[b"idempotencyKey"] == b"k-1"
    assert 0 < r.pttl(ACME.idempotency("k-1")) <= 86_400_000
    assert r.sismember(CREDIT_TENANTS, "acme")
    assert result.settle_now  # the first deduction asks for a settle task


def test_a_missing_balance_is_read_through_from_the_wrapper(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given no cached balance (the sandbox Wrapper says user-456 has 100)
    assert r.get(ACME.balance("user-456")) is None

    # When a credit is deducted
    result = deduct(store, wrapper_client, "k-rt")

    # Then the Wrapper's balance was cached, then charged
    assert result.remaining == 99
    assert r.get(ACME.balance("user-456")) == b"99"


def test_an_unknown_user_has_no_balance_to_charge(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a user the Wrapper does not know
    # When a deduction is attempted, then it fails and leaves nothing behind
    with pytest.raises(BalanceUnknown):
        deduct(store, wrapper_client, "k-nobody", user_id="nobody")
    assert r.exists(ACME.idempotency("k-nobody"), ACME.balance("nobody"), ACME.credit_outbox) == 0


def test_a_balance_the_cache_did_not_keep_is_unavailable_never_an_unknown_user(
    r: redis.Redis, store: Store, settings: Any, wrapper_client: WrapperClient
) -> None:
    # Given a reader that cannot reach Redis (as right after a restart, until its probe finds
    # Redis again) while the store reaches it, and no balance cached: Redis lost it
    unreachable = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with SmartCRMConsumer("acme", settings=unreachable) as reader:
        # When a deduction reads the balance through that reader, which answers from the
        # Wrapper without caching
        with pytest.raises(StoreUnavailable):
            deduct(
                store,
                wrapper_client,
                "k-lost",
                read_through=lambda: reader.get_user_credits_detail("user-456"),
            )
    # Then it fails closed as a cache outage (503), not "no such user", and charges nothing
    assert r.exists(ACME.idempotency("k-lost"), ACME.balance("user-456"), ACME.credit_outbox) == 0


def test_insufficient_credits_charge_nothing_and_remember_nothing(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given 2 credits
    r.set(ACME.balance("user-456"), "2")

    # When 3 are asked for
    with pytest.raises(InsufficientCredits) as raised:
        deduct(store, wrapper_client, "k-poor", amount=3)

    # Then nothing changed, and the same key may succeed after a top-up
    assert (raised.value.available, raised.value.required) == ("2", "3")
    assert r.get(ACME.balance("user-456")) == b"2"
    assert not r.exists(ACME.idempotency("k-poor"), ACME.credit_outbox)
    r.incrbyfloat(ACME.balance("user-456"), 5)
    assert deduct(store, wrapper_client, "k-poor", amount=3).remaining == 4


def test_the_same_key_replays_the_first_answer_and_charges_once(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a balance of 10
    r.set(ACME.balance("user-456"), "10")

    # When the same deduction is sent 10 times, 8 of them concurrently
    first = deduct(store, wrapper_client, "k-same")
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: deduct(store, wrapper_client, "k-same"), range(8)))
    last = deduct(store, wrapper_client, "k-same")

    # Then one charge, one outbox entry, and every answer is the first one
    assert r.get(ACME.balance("user-456")) == b"9"
    assert len(outbox(r)) == 1
    for answer in [*concurrent, last]:
        assert answer.replayed
        assert (answer.deduction_id, answer.amount, answer.remaining) == (
            first.deduction_id,
            1,
            9,
        )


def test_the_same_key_with_another_request_is_a_conflict(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a deduction made with key k
    r.set(ACME.balance("user-456"), "10")
    deduct(store, wrapper_client, "k-reused", amount=1)

    # When k is sent with another amount, then it is refused and nothing more is charged
    with pytest.raises(IdempotencyConflict):
        deduct(store, wrapper_client, "k-reused", amount=2)
    assert r.get(ACME.balance("user-456")) == b"9"
    assert len(outbox(r)) == 1


def test_a_cost_of_zero_is_recorded_without_an_outbox_entry(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given a balance of 0 and an operation that costs 0
    r.set(ACME.balance("user-456"), "0")

    # When it is charged
    result = deduct(store, wrapper_client, "k-free", amount=0)

    # Then it is recorded, the balance is untouched and there is nothing to settle
    assert (result.amount, result.remaining) == (0, 0)
    assert r.exists(ACME.idempotency("k-free"))
    assert not r.exists(ACME.credit_outbox)


def test_fractional_amounts_are_exact_decimals(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given 0.3 credits; when 0.1 is charged three times
    r.set(ACME.balance("user-456"), "0.3")
    for i in range(3):
        deduct(store, wrapper_client, f"k-frac-{i}", amount=0.1)

    # Then exactly nothing is left, and a fourth charge is refused
    assert credits.as_number(r.get(ACME.balance("user-456")) or b"") == 0
    with pytest.raises(InsufficientCredits):
        deduct(store, wrapper_client, "k-frac-3", amount=0.1)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "abc", True])
def test_amounts_must_be_finite_and_not_negative(bad: object) -> None:
    with pytest.raises(ValueError):
        credits.format_amount(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\t", "é"])
def test_idempotency_keys_are_printable_ascii(key: str) -> None:
    with pytest.raises(ValueError):
        credits.validate_key(key)


def test_1000_concurrent_deductions_against_500_credits_charge_exactly_500(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    # Given 500 credits and a watcher that samples the balance throughout
    r.set(ACME.balance("user-456"), "500")
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(float(r.get(ACME.balance("user-456")) or 0))

    watcher = threading.Thread(target=watch)
    watcher.start()

    # When 1,000 one-credit deductions race on 16 threads
    def attempt(i: int) -> credits.Deduction | None:
        try:
            return deduct(store, wrapper_client, f"k-race-{i}")
        except InsufficientCredits:
            return None

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(attempt, range(1000)))
    finally:
        done.set()
        watcher.join()

    # Then exactly 500 succeeded, each left a distinct balance, and it never went below 0
    charged = [res for res in results if res is not None]
    assert len(charged) == 500
    assert sorted(res.remaining for res in charged) == list(range(500))
    assert r.get(ACME.balance("user-456")) == b"0"
    assert r.xlen(ACME.credit_outbox) == 500
    assert min(seen) >= 0


def test_deductions_fail_closed_when_redis_is_down(wrapper_client: WrapperClient) -> None:
    # Given a cache nobody listens on
    dead = make_redis(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)

    # When a deduction is attempted, then it fails with StoreUnavailable (nothing charged)
    with pytest.raises(StoreUnavailable):
        deduct(Store(dead), wrapper_client, "k-down")
    dead.close()
