"""Every tenant in one process: one CRMCache serving many tenants over one Redis pool and one
pub/sub connection, with tenant isolation, coherence, fork safety, degraded mode, a fair entry
budget and idle tenants dropped, against a real Redis."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from consumer import CRMCache, SmartCRMConsumer
from consumer.read.read_through import Kept, LocalCopies
from crmcache.errors import StoreUnavailable, TenantNotReady
from crmcache.store import Store
from tests.conftest import wait_until
from tests.reader_helpers import (
    apply_cost,
    child_result,
    load_snapshot,
    private_redis,
    run_in_child,
    small_tenant,
)

OP = "crm.leads.create"
TENANT_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z")


def many(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def load_many(store: Store, tenants: list[str]) -> None:
    """Tenant i costs i credits per lead."""
    for i, tenant in enumerate(tenants):
        load_snapshot(store, tenant, small_tenant(i))


def client(settings: Any, **overrides: Any) -> CRMCache:
    return CRMCache(settings.model_copy(update={"reader_requests_preload": False, **overrides}))


@pytest.fixture
def crm(settings: Any) -> Iterator[CRMCache]:
    cache = client(settings, near_cache_staleness_ms=60_000)
    yield cache
    cache.close()


def connections_of_others(server_client: redis.Redis) -> int:
    """Clients connected to the server, the asking one left out."""
    return len(server_client.client_list()) - 1


def test_two_hundred_tenants_are_served_over_a_handful_of_redis_connections(
    settings: Any,
) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        # Given 200 loaded tenants
        tenants = many("c", 200)
        load_many(own_store, tenants)
        threads_before = threading.active_count()
        # When one process reads every one of them (costs and permissions)
        with client(own_settings) as crm:
            for i, tenant in enumerate(tenants):
                view = crm.tenant(tenant)
                assert view.get_credit_cost(OP) == i
                assert view.check_permission("user-1", OP)
            wait_until(lambda: crm.listening, what="the change feed")
            # Then it holds a handful of Redis connections and one thread, not one per tenant
            assert connections_of_others(own_store.redis) <= 4
            assert threading.active_count() - threads_before == 1
            assert crm.get_metrics()["tenants"] == 200


def test_smart_crm_consumers_of_many_tenants_share_the_process_client(settings: Any) -> None:
    with private_redis(settings) as (_, own_settings, own_store):
        # Given 200 loaded tenants
        tenants = many("s", 200)
        load_many(own_store, tenants)
        reader_settings = own_settings.model_copy(update={"reader_requests_preload": False})
        # When the seed's way is used: one SmartCRMConsumer per tenant
        readers = [SmartCRMConsumer(t, reader_settings) for t in tenants]
        try:
            for i, reader in enumerate(readers):
                assert reader.get_credit_cost(OP) == i
            # Then they are views over one client: a handful of connections, not 200 pools
            assert connections_of_others(own_store.redis) <= 4
        finally:
            for reader in readers:
                reader.shutdown()
        # ... and the last shutdown closes the client
        wait_until(lambda: connections_of_others(own_store.redis) == 0, what="closed")


def test_a_change_for_tenant_137_reaches_only_tenant_137s_entries(
    store: Store, crm: CRMCache
) -> None:
    # Given 200 tenants warm and trusted in one process (a long staleness bound: only a change
    # notification can tell them apart)
    tenants = many("t", 200)
    load_many(store, tenants)
    views = [crm.tenant(t).initialize() for t in tenants]
    wait_until(lambda: crm.listening, what="the change feed")
    versions = [v.get_metrics()["nearCache"]["version"] for v in views]
    # When tenant 137's cost changes (applied and announced as the workers do)
    apply_cost(store, "t137", OP, 1000)
    # Then tenant 137 sees it through its notification
    wait_until(lambda: views[137].get_credit_cost(OP) == 1000, what="t137's new cost")
    assert views[137].get_credit_cost_detail(OP).source == "near-cache"
    # And no other tenant's near-cache moved: same version, same answers, still served warm
    for i, view in enumerate(views):
        if i == 137:
            continue
        answer = view.get_credit_cost_detail(OP)
        assert (answer.cost, answer.source) == (i, "near-cache"), view.tenant
        assert view.get_metrics()["nearCache"]["version"] == versions[i], view.tenant


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tenants=st.lists(TENANT_IDS, min_size=2, max_size=4, unique=True), cost=st.integers(0, 99))
def test_a_tenants_redis_keys_never_answer_another_tenants_view(
    tenants: list[str], cost: int, store: Store, settings: Any
) -> None:
    # Given several tenants whose ids may prefix one another, only the first one loaded
    store.redis.flushdb()
    load_snapshot(store, tenants[0], small_tenant(cost))
    with client(settings) as crm:
        # When every tenant is read through one client
        # Then the loaded tenant answers its data, and no other tenant sees any of it
        assert crm.tenant(tenants[0]).get_credit_cost(OP) == cost
        for other in tenants[1:]:
            with pytest.raises(TenantNotReady):
                crm.tenant(other).get_credit_cost(OP)
            with pytest.raises(TenantNotReady):
                crm.tenant(other).check_permission("user-1", OP)
        assert crm.tenant(tenants[0]).get_credit_cost_detail(OP).source == "near-cache"


@given(
    tenants=st.lists(TENANT_IDS, min_size=2, max_size=4, unique=True),
    entity=st.text(min_size=1, max_size=8),
)
def test_a_tenants_local_copies_never_answer_another_tenants_view(
    tenants: list[str], entity: str
) -> None:
    # Given the process's one map of last answers, with a profile kept for the first tenant
    copies = LocalCopies(max_entries=100)
    copies.of(tenants[0]).put("profile", entity, Kept({"of": tenants[0]}, True, 0.0, None))
    # Then no other tenant's view of it holds that profile
    assert copies.of(tenants[0]).get("profile", entity) is not None
    for other in tenants[1:]:
        assert copies.of(other).get("profile", entity) is None
        assert len(copies.of(other)) == 0


def test_a_forked_child_of_a_process_serving_many_tenants_keeps_answering(
    store: Store, crm: CRMCache
) -> None:
    # Given a process serving 50 tenants from warm, trusted near-caches
    tenants = many("f", 50)
    load_many(store, tenants)
    views = [crm.tenant(t).initialize() for t in tenants]
    wait_until(lambda: crm.listening, what="the change feed")
    expected = {t: i for i, t in enumerate(tenants)}
    changed_first = {t: 500 + i for i, t in enumerate(tenants) if i % 5 == 0}
    changed_later = {t: 900 + i for i, t in enumerate(tenants) if i % 7 == 0}
    go_read, go_write = os.pipe()

    def child() -> list[dict[str, Any]]:
        os.close(go_write)
        os.read(go_read, 1)  # the parent changed some costs after the fork
        first = {v.tenant: v.get_credit_cost(OP) for v in views}
        os.read(go_read, 1)  # and others while this child runs
        deadline = time.monotonic() + 5
        later = first
        while time.monotonic() < deadline:
            later = {v.tenant: v.get_credit_cost(OP) for v in views}
            if all(later[t] == c for t, c in changed_later.items()):
                break
            time.sleep(0.01)
        return [first, later]

    # When the process forks and costs change after the fork, twice
    pid, result_fd = run_in_child(child)
    os.close(go_read)
    for tenant, value in changed_first.items():
        apply_cost(store, tenant, OP, value)
    os.write(go_write, b"1")
    time.sleep(0.1)
    for tenant, value in changed_later.items():
        apply_cost(store, tenant, OP, value)
    os.write(go_write, b"2")
    os.close(go_write)
    first, later = child_result(pid, result_fd)
    # Then the child saw the first changes at once (it distrusts what it inherited) and the
    # second through its own change feed (a 60 s bound: no version check would catch them)
    assert first == {**expected, **changed_first}
    assert later == {**expected, **changed_first, **changed_later}
    # ... and the parent still answers every tenant
    wait_until(
        lambda: {v.tenant: v.get_credit_cost(OP) for v in views} == later,
        what="the parent's answers",
    )


def test_redis_down_gives_every_tenant_its_last_known_good_answers_and_deductions_fail_closed(
    settings: Any,
) -> None:
    with private_redis(settings) as (server, own_settings, own_store):
        # Given 20 tenants read once by one process
        tenants = many("d", 20)
        load_many(own_store, tenants)
        with client(own_settings) as crm:
            views = [crm.tenant(t) for t in tenants]
            for i, view in enumerate(views):
                assert view.get_credit_cost(OP) == i and view.check_permission("user-0", OP)
            # When Redis stops
            server.stop()
            wait_until(lambda: views[0].get_credit_cost_detail(OP).stale, what="degraded")
            # Then every tenant answers its own last-known-good values, flagged stale
            for i, view in enumerate(views):
                cost = view.get_credit_cost_detail(OP)
                check = view.check_permission_detail("user-0", OP)
                assert (cost.cost, cost.stale, cost.source) == (i, True, "last-known-good")
                assert (check.authorized, check.stale) == (True, True)
            # ... and a deduction for any of them fails closed
            with pytest.raises(StoreUnavailable):
                views[3].deduct_credits("user-0", 1, "order-1")
            # When Redis is back, empty, and the tenants are loaded again with new costs
            server.start()
            for i, tenant in enumerate(tenants):
                load_snapshot(own_store, tenant, small_tenant(100 + i))
            # Then every tenant answers fresh values again
            for i, view in enumerate(views):
                wait_until(
                    lambda view=view, i=i: (
                        (a := view.get_credit_cost_detail(OP)).cost == 100 + i and not a.stale
                    ),
                    timeout=5.0,
                    what=f"{view.tenant}'s fresh answer",
                )


def test_a_tenant_that_stops_reading_cannot_keep_a_busy_one_out_of_the_entry_budget(
    store: Store, settings: Any
) -> None:
    # Given a process whose near-cache budget is 1,000 entries, 900 of them held by a tenant
    # that read its whole data once (warm-up) and stopped
    users = 900
    idle = small_tenant(1, users=users - 2)  # + 1 cost + 1 role
    busy = small_tenant(2, users=400)
    load_snapshot(store, "idle", idle)
    load_snapshot(store, "busy", busy)
    with client(settings, near_cache_max_entries=1000, near_cache_staleness_ms=60_000) as crm:
        assert crm.tenant("idle").initialize().get_metrics()["criticalCacheSize"] == users
        # When a busy tenant reads 400 of its users, twice
        view = crm.tenant("busy")
        for i in range(400):
            view.check_permission(f"user-{i}", OP)
        sources = [view.check_permission_detail(f"user-{i}", OP).source for i in range(400)]
        # Then its second pass is answered from the near-cache: the room came from the tenant
        # holding more than its share, and the budget holds
        assert sources.count("near-cache") == 400
        assert crm.budget.recount() <= 1000
        assert crm.tenant("idle").get_metrics()["criticalCacheSize"] < users


def test_a_tenant_idle_past_the_timeout_is_dropped_and_loaded_again_on_its_next_read(
    store: Store, settings: Any
) -> None:
    # Given a process serving two tenants, with a short idle timeout
    load_many(store, ["idle0", "busy1"])
    with client(settings, tenant_idle_timeout=0.3) as crm:
        idle, busy = crm.tenant("idle0"), crm.tenant("busy1")
        assert idle.get_credit_cost(OP) == 0 and busy.get_credit_cost(OP) == 1
        held = crm.get_metrics()["nearCacheEntries"]
        # When only one of them keeps reading
        deadline = time.monotonic() + 5
        while "idle0" in crm.tenants() and time.monotonic() < deadline:
            assert busy.get_credit_cost(OP) == 1
            time.sleep(0.02)
        # Then the other is dropped, its entries leave the budget
        assert crm.tenants() == ["busy1"]
        assert crm.budget.recount() < held
        # And its next read loads it again
        assert idle.get_credit_cost_detail(OP).source == "redis"
        assert idle.get_credit_cost(OP) == 0
        assert crm.tenants() == ["busy1", "idle0"]


def test_the_prometheus_collector_reports_every_tenant_of_the_process(
    store: Store, crm: CRMCache
) -> None:
    from consumer.read.prometheus import exposition

    load_many(store, ["p0", "p1"])
    crm.tenant("p0").get_credit_cost(OP)
    crm.tenant("p1").get_credit_cost(OP)
    text = exposition()
    for tenant in ("p0", "p1"):
        assert f'crmcache_read_hits_total{{data_class="credit-costs",tenant="{tenant}"}} 1.0' in (
            text.decode()
        )
