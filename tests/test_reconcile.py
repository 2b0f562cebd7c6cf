"""The reconciler (crmcache.reconcile) against real Redis and PostgreSQL: whatever a crash left
between reserve, the lead's insert and the commit ends as "no lead, hold voided" or "the lead,
charged once"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from crmcache import holds, leads
from crmcache.lead_store import Lead, LeadStore
from crmcache.reconcile import Reconciler
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from tests.conftest import wait_until

USER = "user-456"
TTL = 86_400


@pytest.fixture
def wrapper_client(settings: Any, wrapper: Any) -> Iterator[WrapperClient]:
    client = WrapperClient(settings)
    yield client
    client.close()


@pytest.fixture
def reconciler(store: Store, wrapper_client: WrapperClient, lead_store: LeadStore) -> Reconciler:
    return Reconciler(store, wrapper_client, lead_store, timeout_s=30, ttl_s=TTL)


def reserve_for_lead(store: Store, client: WrapperClient, key: str, fp: str = "") -> holds.Hold:
    """Step 1 of a lead request (the API would write the lead next)."""
    return holds.reserve(
        store,
        client,
        "acme",
        user_id=USER,
        operation=leads.LEAD_OPERATION,
        amount=2,
        idempotency_key=key,
        timeout_s=30,
        ttl_s=TTL,
        request_fingerprint=fp or None,
        result_ref=leads.new_lead_id(),
    )


def the_lead(hold: holds.Hold) -> Lead:
    return Lead("acme", hold.result_ref, USER, hold.hold_id, "2", {"name": "Jane"}, "2026-01-01")


def overdue(r: redis.Redis, hold: holds.Hold) -> None:
    keys = holds.TenantKeys.of("acme")
    r.zadd(keys.hold_deadlines(USER), {hold.hold_id: 1})
    r.zadd(keys.hold_users, {USER: 1})


def test_a_crash_before_the_insert_leaves_no_lead_and_a_voided_hold(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient, lead_store: LeadStore, reconciler
) -> None:
    # Given an API process that reserved for a lead and died before writing it
    r.set(holds.TenantKeys.of("acme").balance(USER), "10")
    hold = reserve_for_lead(store, wrapper_client, "crash-1")
    overdue(r, hold)

    # When the reconciler runs
    report = reconciler.reconcile("acme")

    # Then the hold is voided, the credits are back, and the lead id can never be written
    assert (report.voided, report.committed) == (1, 0)
    assert holds.balance(store, "acme", USER) == (10, 0)
    assert lead_store.get("acme", hold.result_ref) is None
    assert lead_store.insert(the_lead(hold)) is False
    assert lead_store.count("acme") == 0


def test_a_crash_after_the_insert_leaves_the_lead_charged_once(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient, lead_store: LeadStore, reconciler
) -> None:
    # Given a lead written whose hold was never committed (the process died in between)
    r.set(holds.TenantKeys.of("acme").balance(USER), "10")
    hold = reserve_for_lead(store, wrapper_client, "crash-2")
    assert lead_store.insert(the_lead(hold))
    overdue(r, hold)

    # When the reconciler runs twice
    first = reconciler.reconcile("acme")
    second = reconciler.reconcile("acme")

    # Then the charge was committed once, and the lead is marked charged
    assert (first.committed, first.voided, second.committed) == (1, 0, 0)
    assert holds.balance(store, "acme", USER) == (8, 0)
    assert r.xlen(holds.TenantKeys.of("acme").credit_outbox) == 1
    assert lead_store.count("acme", charged=True) == 1


def test_a_late_insert_after_the_reconciler_voided_fails_and_the_retry_starts_over(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient, lead_store: LeadStore, reconciler
) -> None:
    # Given an API process stalled between reserve and insert past the hold's deadline
    r.set(holds.TenantKeys.of("acme").balance(USER), "10")
    request = leads.LeadRequest("acme", USER, {"name": "Jane"}, 2, "stall-1", "fp-1")
    hold = reserve_for_lead(store, wrapper_client, "stall-1", "fp-1")
    overdue(r, hold)
    reconciler.reconcile("acme")

    # When it wakes and writes its lead, then the tombstone refuses it: no lead, no charge
    assert lead_store.insert(the_lead(hold)) is False
    # And the client's retry with the same key reserves anew and gets a new lead, charged once
    answer = leads.create_lead(store, wrapper_client, lead_store, request, timeout_s=30, ttl_s=TTL)
    assert answer.lead_id != hold.result_ref and not answer.replayed
    assert lead_store.count("acme", charged=True) == 1
    assert holds.balance(store, "acme", USER) == (8, 0)


def test_holds_whose_records_expired_are_still_decided(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient, lead_store: LeadStore, reconciler
) -> None:
    # Given two overdue holds waiting on leads (one written), with the reconciler down so long
    # that their records expired: only the user's open holds remain
    r.set(holds.TenantKeys.of("acme").balance(USER), "10")
    written, never = (reserve_for_lead(store, wrapper_client, k) for k in ("old-1", "old-2"))
    lead_store.insert(the_lead(written))
    for hold in (written, never):
        overdue(r, hold)
        r.delete(holds.TenantKeys.of("acme").hold(hold.hold_id))
        r.delete(holds.TenantKeys.of("acme").idempotency(hold.idempotency_key))

    # When the reconciler runs, then the written lead is charged and the other hold voided
    report = reconciler.reconcile("acme")
    assert (report.committed, report.voided) == (1, 1)
    assert holds.balance(store, "acme", USER) == (8, 0)
    assert lead_store.count("acme", charged=True) == 1


def test_a_lead_whose_hold_redis_lost_is_charged_directly(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient, lead_store: LeadStore, reconciler
) -> None:
    # Given a lead in the database whose hold Redis no longer has (it restarted empty)
    hold = reserve_for_lead(store, wrapper_client, "lost-1")
    lead_store.insert(the_lead(hold))
    r.flushdb()

    # When the reconciler runs (the lead is older than a hold's timeout)
    reconciler.timeout_s = -60
    report = reconciler.reconcile("acme")
    again = reconciler.reconcile("acme")

    # Then the lead was charged directly, once, from the balance read through again
    assert (report.charged_directly, again.charged_directly) == (1, 0)
    assert r.get(holds.TenantKeys.of("acme").balance(USER)) == b"98"
    assert lead_store.count("acme", charged=True) == 1


def test_the_beat_task_reconciles_through_the_worker(
    r: redis.Redis,
    store: Store,
    wrapper_client: WrapperClient,
    lead_store: LeadStore,
    wrapper: Any,
    worker: Any,
    database_url: str,
) -> None:
    from tasks.credits import reconcile_credits

    # Given a plain hold of an idle user and a written lead whose hold is still open
    keys = holds.TenantKeys.of("acme")
    r.set(keys.balance(USER), "10")
    idle = holds.reserve(
        store, wrapper_client, "acme", user_id=USER, operation="x", amount=3,
        idempotency_key="idle", timeout_s=30, ttl_s=TTL,
    )  # fmt: skip
    hold = reserve_for_lead(store, wrapper_client, "beat-1")
    lead_store.insert(the_lead(hold))
    r.zadd(keys.hold_deadlines(USER), {idle.hold_id: 1, hold.hold_id: 1})
    r.zadd(keys.hold_users, {USER: 1})

    # When beat's reconcile task runs on the worker
    reconcile_credits.delay(guard=False)

    # Then the idle hold is voided, the lead charged and settled with the Wrapper
    wait_until(lambda: lead_store.count("acme", charged=True) == 1, timeout=15, what="charged")
    wait_until(lambda: wrapper.consumed, timeout=15, what="settled")
    assert holds.balance(store, "acme", USER) == (8, 0)
    [(_, body)] = wrapper.consumed.items()
    assert body["amount"] == 2 and body["operationCode"] == leads.LEAD_OPERATION
