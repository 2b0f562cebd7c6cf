"""Preload (resync) from the Wrapper, the beat fan-out and its guard, and the Wrapper client."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from crmcache.errors import WrapperError, WrapperNotFound, WrapperUnavailable
from crmcache.events import parse_envelope
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.preload import preload_tenant, snapshot_writes
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from tests.conftest import wait_until

ACME = TenantKeys.of("acme")


@pytest.fixture
def client(settings: Any) -> Any:
    wrapper_client = WrapperClient(settings)
    yield wrapper_client
    wrapper_client.close()


def hash_of(r: redis.Redis, data_class: DataClass) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(ACME.values(data_class)).items()}


def test_preload_loads_every_page_and_marks_the_tenant_ready(
    r: redis.Redis, store: Store, wrapper: Any, client: Any
) -> None:
    # Given a tenant with more users than one page holds
    for i in range(25):
        wrapper.set_user("acme", f"bulk-{i}", status="active", roles=["viewer"], publish=False)
    assert not store.is_ready("acme")
    # When it is preloaded with pages of 10
    report = preload_tenant(store, client, "acme", page_size=10)
    # Then every user, role and cost is cached, and the tenant is ready
    statuses = hash_of(r, DataClass.USER_STATUS)
    assert {f"bulk-{i}" for i in range(25)} <= set(statuses)
    assert statuses["user-456"] == "active" and statuses["user-789"] == "suspended"
    assert hash_of(r, DataClass.USER_ROLES)["user-456"] == '["sales"]'
    assert hash_of(r, DataClass.CREDIT_COSTS)["crm.contacts.view"] == "0"
    assert "sales" in hash_of(r, DataClass.ROLES)
    assert store.is_ready("acme")
    assert report.written["user-status"] == len(statuses)
    assert wrapper.requests["GET", "/api/users/access"] >= 3


def test_preload_removes_what_the_wrapper_no_longer_has(
    r: redis.Redis, store: Store, wrapper: Any, client: Any
) -> None:
    preload_tenant(store, client, "acme")
    # Given a role and a cost deleted at the Wrapper while their events were lost
    wrapper.delete_role("acme", "viewer", publish=False)
    wrapper.delete_credit_cost("acme", "crm.reports.export", publish=False)
    # When the tenant is resynced
    report = preload_tenant(store, client, "acme")
    # Then they are gone from the cache
    assert "viewer" not in hash_of(r, DataClass.ROLES)
    assert "crm.reports.export" not in hash_of(r, DataClass.CREDIT_COSTS)
    assert report.removed["roles"] == 1 and report.removed["credit-costs"] == 1


def test_a_failing_wrapper_fails_the_preload_and_writes_nothing(
    r: redis.Redis, store: Store, wrapper: Any, client: Any
) -> None:
    # Given the Wrapper fails on the second call of the snapshot
    wrapper.set_fault(status=500, path_prefix="/api/roles")
    # When the tenant is preloaded, then the failure is raised (never swallowed)
    with pytest.raises(WrapperUnavailable):
        preload_tenant(store, client, "acme")
    # And nothing was written, the tenant is not ready
    assert hash_of(r, DataClass.CREDIT_COSTS) == {}
    assert not store.is_ready("acme")


def test_an_event_applied_while_the_preload_asks_the_wrapper_survives_the_preload(
    r: redis.Redis, store: Store, wrapper: Any, client: Any
) -> None:
    # Given a preload held in its last call to the Wrapper (roles already fetched)
    wrapper.set_fault(delay=1.0, path_prefix="/api/users/access", times=1)
    preload = threading.Thread(target=preload_tenant, args=(store, client, "acme"))
    preload.start()
    wait_until(lambda: wrapper.requests["GET", "/api/users/access"] >= 1, what="users fetch")
    # When the Wrapper narrows role sales meanwhile and the subscriber's event is applied
    wrapper.set_role("acme", "sales", ["crm.contacts.view"], publish=False)
    event = parse_envelope(
        "acme",
        "roles",
        {
            "eventType": "role-changed",
            "data": {"roleId": "sales", "permissions": ["crm.contacts.view"]},
        },
    )
    stamp = store.reserve_stamps({"acme": 1})["acme"]
    assert store.apply_events("acme", [replace(event, seq=stamp)]).written == 1
    preload.join(timeout=10)
    # Then the snapshot (which fetched the old role) did not overwrite the event: the preload
    # took its start stamp before it asked the Wrapper anything
    assert not preload.is_alive()
    assert hash_of(r, DataClass.ROLES)["sales"] == '["crm.contacts.view"]'
    assert store.is_ready("acme")


def test_invalid_snapshot_items_are_skipped_and_reported() -> None:
    skipped: list[str] = []
    writes = snapshot_writes(
        "acme",
        "credit-config-changed",
        [
            {"operationCode": "good", "creditCost": 2},
            {"operationCode": "bad", "creditCost": -3},
            {"creditCost": 1},
            "not an object",
        ],
        skipped,
    )
    assert [(w.field, w.value) for w in writes] == [("good", "2")]
    assert len(skipped) == 3 and "newValue must be a number" in skipped[0]


def test_beat_preload_runs_once_even_when_two_beats_fire(
    r: redis.Redis, wrapper: Any, worker: Any, celery_app: Any
) -> None:
    from tasks.preload import preload_all

    # When two beats fire the same scheduled preload
    first = preload_all.apply_async(kwargs={"reason": "schedule"})
    second = preload_all.apply_async(kwargs={"reason": "schedule"})
    # Then the tenants are preloaded, by one run only
    wait_until(lambda: r.hget(ACME.meta, "ready") == b"1", what="acme preloaded")
    wait_until(lambda: r.hget(TenantKeys.of("globex").meta, "ready") == b"1", what="globex")
    time.sleep(0.5)
    assert wrapper.requests["GET", "/api/tenants"] == 1
    assert first.id != second.id


def test_wrapper_client_retries_a_5xx_then_succeeds(wrapper: Any, client: Any) -> None:
    wrapper.set_fault(status=503, path_prefix="/api/roles", times=1)
    roles = client.roles("acme")
    assert {role["roleId"] for role in roles} >= {"sales", "admin"}
    assert wrapper.requests["GET", "/api/roles"] == 2


def test_wrapper_client_times_out_instead_of_hanging(wrapper: Any, settings: Any) -> None:
    quick = WrapperClient(
        settings.model_copy(update={"wrapper_read_timeout": 0.2, "wrapper_retries": 0})
    )
    wrapper.set_fault(delay=2.0, path_prefix="/api/roles")
    started = time.monotonic()
    try:
        with pytest.raises(WrapperUnavailable, match="Timeout"):
            quick.roles("acme")
    finally:
        quick.close()
    assert time.monotonic() - started < 1.5


def test_breaker_opens_after_failures_and_closes_after_the_reset_time(
    wrapper: Any, client: Any, settings: Any
) -> None:
    # Given the Wrapper failing (the test settings: 3 failures open, 1 s reset)
    wrapper.set_fault(status=500, path_prefix="/api/roles")
    for _ in range(settings.wrapper_breaker_failures):
        with pytest.raises(WrapperUnavailable):
            client.roles("acme")
    calls = wrapper.requests["GET", "/api/roles"]
    # When the breaker is open, then calls fail fast without reaching the Wrapper
    with pytest.raises(WrapperUnavailable, match="circuit open"):
        client.roles("acme")
    assert wrapper.requests["GET", "/api/roles"] == calls
    assert client.breaker_state("acme") == "open"
    # And another tenant's breaker is unaffected
    assert client.breaker_state("globex") == "closed"
    # When the Wrapper recovers and the reset time passes, then one trial call closes it
    wrapper.clear_faults()
    time.sleep(settings.wrapper_breaker_reset + 0.1)
    assert client.roles("acme")
    assert client.breaker_state("acme") == "closed"


def test_wrapper_errors_are_translated(wrapper: Any, client: Any) -> None:
    with pytest.raises(WrapperNotFound):
        client.user_profile("acme", "nobody")
    wrapper.set_fault(status=400, path_prefix="/api/roles", times=1)
    with pytest.raises(WrapperError):
        client.roles("acme")
    wrapper.set_down(True)
    with pytest.raises(WrapperUnavailable):
        client.roles("globex")
