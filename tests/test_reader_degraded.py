"""Degraded mode, readiness and fork safety: Redis stopped (a private server), a tenant never
loaded, and a forked child process."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import redis

from crmcache.errors import StaleDataTooOld, StoreUnavailable, TenantNotReady
from crmcache.events import Event
from crmcache.keyspace import TenantKeys
from crmcache.store import Store
from tests.conftest import wait_until
from tests.reader_helpers import child_result, preload, private_redis, reader, run_in_child

OP = "crm.reports.export"


def change_cost(store: Store, op: str, value: float) -> None:
    """The write side's path: a credit-config-changed event applied (and PUBLISHed)."""
    seq = int(store.redis.incr(TenantKeys.of("acme").seq))
    event = Event(
        tenant="acme",
        stream="credit-configs",
        event_type="credit-config-changed",
        data={"operationCode": op, "newValue": value},
        seq=seq,
    )
    store.apply_events("acme", [event])


def test_redis_stopped_answers_from_last_known_good_then_fresh_when_back(
    wrapper: Any, settings: Any
) -> None:
    with private_redis(settings) as (server, own_settings, own_store):
        # Given a reader that has read a cost and a permission
        preload(own_store, own_settings)
        with reader(own_settings) as crm:
            crm.initialize()
            assert crm.get_credit_cost(OP) == 5
            assert crm.check_permission("user-456", "crm.leads.create")
            # When Redis stops
            server.stop()
            wait_until(lambda: crm.get_credit_cost_detail(OP).stale, what="a degraded answer")
            cost = crm.get_credit_cost_detail(OP)
            check = crm.check_permission_detail("user-456", "crm.leads.create")
            # Then critical reads answer the last-known-good values, flagged stale with an age
            assert (cost.cost, cost.source) == (5, "last-known-good")
            assert (check.authorized, check.stale, check.source) == (True, True, "last-known-good")
            assert check.age_ms >= 0
            # ... what the reader never held has no copy: a typed error, not a guess
            with pytest.raises(StoreUnavailable):
                crm.check_permission("ghost", "crm.leads.create")
            with pytest.raises(StoreUnavailable):
                crm.get_credit_cost("crm.never.read")
            metrics = crm.get_metrics()
            assert metrics["degraded"] is True
            assert metrics["degradedResponses"] >= 2 and metrics["staleResponses"] >= 2
            # When Redis comes back (empty: no disk) and is loaded again, with a new cost
            wrapper.set_credit_cost("acme", OP, 8, publish=False)
            server.start()
            preload(own_store, own_settings)
            # Then the same reader answers fresh values again, without a restart
            wait_until(
                lambda: (a := crm.get_credit_cost_detail(OP)).cost == 8 and not a.stale,
                timeout=5.0,
                what="a fresh answer after Redis is back",
            )
            assert crm.get_credit_cost_detail(OP).source in ("redis", "near-cache")
            assert crm.get_metrics()["degraded"] is False


def test_last_known_good_older_than_the_maximum_age_is_refused(wrapper: Any, settings: Any) -> None:
    with private_redis(settings) as (server, own_settings, own_store):
        preload(own_store, own_settings)
        with reader(own_settings, degraded_max_age=0.3) as crm:
            crm.initialize()
            assert crm.get_credit_cost(OP) == 5
            # Given Redis stopped and the copy answering, stale
            server.stop()
            wait_until(lambda: crm.get_credit_cost_detail(OP).stale, what="a degraded answer")
            # When the copy gets older than CRM_DEGRADED_MAX_AGE
            time.sleep(0.35)
            # Then the reader refuses to answer from it
            with pytest.raises(StaleDataTooOld):
                crm.get_credit_cost(OP)


def test_a_tenant_never_loaded_is_not_ready_and_a_preload_is_requested(
    wrapper: Any, settings: Any, worker: Any, r: redis.Redis
) -> None:
    # Given a tenant whose critical data was never loaded
    with reader(settings, reader_requests_preload=True) as crm:
        # When a cost is asked
        # Then the reader does not say "not configured": it raises and asks for a preload
        with pytest.raises(TenantNotReady):
            crm.get_credit_cost("crm.leads.create")
        with pytest.raises(TenantNotReady):
            crm.check_permission("user-456", "crm.leads.create")
        assert crm.get_metrics()["preloadRequests"] == 1
        # ... which the workers run, after which the answers come
        wait_until(lambda: _ready(crm), timeout=10, what="the requested preload")
        assert crm.get_credit_cost("crm.leads.create") == 1
        assert crm.get_credit_cost("crm.unknown.op") is None  # now "not configured"


def _ready(crm: Any) -> bool:
    """Whether the tenant is marked ready: a cost the preload already wrote is answered before
    that, but only a ready tenant says an operation is not configured."""
    try:
        crm.get_credit_cost("crm.unknown.op")
    except TenantNotReady:
        return False
    return True


def test_a_forked_child_reads_changes_made_after_the_fork(
    store: Any, wrapper: Any, settings: Any
) -> None:
    # Given a parent reader with a warm, trusted near-cache (long staleness bound)
    preload(store, settings)
    go_read, go_write = os.pipe()
    with reader(settings, near_cache_staleness_ms=30_000) as crm:
        crm.initialize()
        assert crm.get_credit_cost(OP) == 5

        def child() -> list[Any]:
            os.close(go_write)
            os.read(go_read, 1)  # the parent changed the cost after the fork
            first = crm.get_credit_cost(OP)
            os.read(go_read, 1)  # and changed it again while this child runs
            deadline = time.monotonic() + 5
            while (later := crm.get_credit_cost(OP)) != 7 and time.monotonic() < deadline:
                time.sleep(0.01)
            return [first, later]

        # When the process forks, and the cost changes after the fork (twice)
        pid, result_fd = run_in_child(child)
        os.close(go_read)
        change_cost(store, OP, 6)
        os.write(go_write, b"1")
        time.sleep(0.1)
        change_cost(store, OP, 7)
        os.write(go_write, b"2")
        os.close(go_write)
        first, later = child_result(pid, result_fd)
        # Then the child saw the first change at once (it distrusts the copy it inherited)
        # and the second through its own notifications (it does not freeze)
        assert (first, later) == (6, 7)
        # ... and the parent still works
        wait_until(lambda: crm.get_credit_cost(OP) == 7, what="the parent's answer")
