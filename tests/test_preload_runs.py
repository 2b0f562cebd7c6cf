"""Preloading many tenants: runs that report progress and failures, retries, and the bound on
preloads asking the Wrapper at once (crmcache/preload_runs.py, tasks/preload.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import celery_config
from crmcache import keyspace, preload_runs
from crmcache.keyspace import TenantKeys
from crmcache.preload_runs import WrapperSlots
from crmcache.store import Store
from ops.dev.redis_server import RedisServer
from tests.conftest import wait_until
from tests.processes import Proc, running, worker_args


def small_tenant(i: int) -> dict[str, Any]:
    return {
        "creditConfigs": [{"operationCode": "crm.leads.create", "creditCost": i}],
        "roles": [{"roleId": "sales", "permissions": ["crm.leads.*"]}],
        "users": [{"userId": f"u{n}", "status": "active", "roles": ["sales"]} for n in range(20)],
    }


def test_the_slots_admit_at_most_the_limit_whoever_asks(store: Store) -> None:
    slots = WrapperSlots(store, limit=2, lease_ms=10_000)
    assert slots.try_acquire("a") and slots.try_acquire("b")
    assert not slots.try_acquire("c")
    assert slots.try_acquire("a")  # a holder renews its own slot
    slots.release("a")
    assert slots.try_acquire("c")
    assert slots.holders() == 2


def test_a_dead_holders_slot_comes_back_after_its_lease(store: Store) -> None:
    slots = WrapperSlots(store, limit=1, lease_ms=100)
    assert slots.try_acquire("killed-worker")
    assert not slots.try_acquire("other")
    time.sleep(0.15)
    assert slots.try_acquire("other")


def test_an_outcome_of_an_older_run_is_not_counted(store: Store) -> None:
    old = preload_runs.start_run(store, ["a", "b"])
    new = preload_runs.start_run(store, ["a"])
    preload_runs.record(store, old, "a", "done")
    preload_runs.record(store, new, "a", "failed", "HTTP 404")
    progress = preload_runs.progress(store)
    assert progress is not None and progress.run_id == new
    assert (progress.done, progress.failed, progress.finished) == (0, 1, True)
    assert progress.failures == {"a": "HTTP 404"}


@pytest.mark.slow
def test_a_run_of_many_tenants_completes_the_healthy_retries_the_failing_and_reports(
    r: redis.Redis, store: Store, wrapper: Any, worker: Any
) -> None:
    from tasks.preload import preload_all

    # Given 45 tenants at the Wrapper, 5 it does not know, and a Wrapper outage on /api/roles
    healthy = [f"many-{i}" for i in range(45)]
    for i, tenant in enumerate(healthy):
        wrapper.add_tenant(tenant, small_tenant(i))
    unknown = [f"gone-{i}" for i in range(5)]
    wrapper.set_fault(status=503, path_prefix="/api/roles")
    # When all 50 are preloaded as one run
    preload_all.delay(reason="test", guard=False, tenants=healthy + unknown)
    wait_until(
        lambda: (p := preload_runs.progress(store)) is not None and p.retried >= 3,
        timeout=30,
        what="preloads failing and retrying during the outage",
    )
    wrapper.clear_faults()
    # Then every healthy tenant completes (the failed ones after retries) and the unknown ones
    # are reported with their reason
    progress = wait_until(
        lambda: (p := preload_runs.progress(store)) is not None and p.finished and p,
        timeout=90,
        what=lambda: f"the run to finish: {preload_runs.progress(store)}",
    )
    assert (progress.total, progress.done, progress.failed) == (50, 45, 5)
    assert progress.retried >= 3
    assert set(progress.failures) == set(unknown)
    assert all(
        "404" in reason or "not found" in reason.lower() for reason in progress.failures.values()
    )
    assert all(store.is_ready(tenant) for tenant in healthy)
    assert (
        r.hget(TenantKeys.of("many-7").values(keyspace.DataClass.CREDIT_COSTS), "crm.leads.create")
        == b"7"
    )


@pytest.mark.slow
def test_at_most_the_configured_number_of_preloads_ask_the_wrapper_at_once(
    r: redis.Redis,
    env: dict[str, str],
    wrapper: Any,
    redis_server: RedisServer,
    settings: Any,
    tmp_path: Path,
) -> None:
    # Given a worker with 6 threads, at most 2 preloads at once, and a slow Wrapper
    broker_url = f"redis://127.0.0.1:{redis_server.port}/7"
    redis.Redis.from_url(broker_url).flushdb()
    tenants = [f"slow-{i}" for i in range(6)]
    for i, tenant in enumerate(tenants):
        wrapper.add_tenant(tenant, small_tenant(i))
    wrapper.set_fault(delay=0.3, path_prefix="/api/users/access")
    worker = Proc(
        worker_args(concurrency=6),
        {**os.environ, "CELERY_BROKER_URL": broker_url, "CRM_PRELOAD_CONCURRENCY": "2"},
        tmp_path / "worker.log",
    )
    app = Celery("preload-bound-test")
    app.conf.update(celery_config(settings.model_copy(update={"celery_broker_url": broker_url})))
    holders: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            holders.append(int(r.zcard(keyspace.PRELOAD_SLOTS)))

    sampler = threading.Thread(target=sample)
    try:
        with running(worker):
            wait_until(lambda: app.control.ping(timeout=0.5), timeout=30, what="the worker")
            sampler.start()
            # When the 6 tenants are preloaded as one run
            started = time.monotonic()
            app.send_task(
                "crmcache.preload_all",
                kwargs={"reason": "test", "guard": False, "tenants": tenants},
                queue="crm.preload",
            )
            store = Store(r)
            wait_until(
                lambda: (p := preload_runs.progress(store)) is not None and p.finished,
                timeout=30,
                what=lambda: f"the run\n{worker.output()[-2000:]}",
            )
            elapsed = time.monotonic() - started
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        app.close()
    # Then never more than 2 held a slot, and the run took at least three rounds of 0.3 s
    assert max(holders) == 2
    assert elapsed >= 3 * 0.3
    assert all(store.is_ready(tenant) for tenant in tenants)
