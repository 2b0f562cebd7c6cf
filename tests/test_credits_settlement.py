"""Settlement: every deduction reaches the Wrapper exactly once in effect, through the real
Celery worker and the sandbox Wrapper over HTTP, including when a worker dies mid-send."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import CREDITS_QUEUE, celery_config
from crmcache import credits
from crmcache.keyspace import OUTBOX_GROUP, TenantKeys
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from tests.conftest import wait_until

ACME = TenantKeys.of("acme")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def wrapper_client(settings: Any, wrapper: Any) -> Iterator[WrapperClient]:
    client = WrapperClient(settings)
    yield client
    client.close()


def charge(store: Store, client: WrapperClient, n: int, user: str = "user-456") -> list[str]:
    """n one-credit deductions; returns their deduction ids (the Wrapper's keys)."""
    return [
        credits.deduct(
            store,
            client,
            "acme",
            user_id=user,
            operation="crm.leads.create",
            amount=1,
            idempotency_key=f"settle-{user}-{i}",
        ).deduction_id
        for i in range(n)
    ]


def outbox_len(r: redis.Redis) -> int:
    return int(r.xlen(ACME.credit_outbox))


def wrapper_balance(wrapper: Any, user: str = "user-456") -> Any:
    return wrapper.state.credits("acme", user)["available"]


def test_settle_credits_reports_each_deduction_once_and_empties_the_outbox(
    r: redis.Redis, store: Store, wrapper: Any, wrapper_client: WrapperClient, worker: Any
) -> None:
    from tasks.credits import settle_credits

    # Given three deductions (user-456 has 100 credits at the Wrapper)
    ids = charge(store, wrapper_client, 3)

    # When the settle task runs on the worker
    settle_credits.delay("acme")

    # Then the Wrapper got each deduction, under its deduction id, and the outbox is empty
    wait_until(lambda: outbox_len(r) == 0, timeout=15, what="outbox drained")
    assert sorted(wrapper.consumed) == sorted(ids)
    body = wrapper.consumed[ids[0]]
    assert body["userId"] == "user-456" and body["amount"] == 1
    assert body["operationCode"] == "crm.leads.create" and body["occurredAt"]
    assert wrapper_balance(wrapper) == 97


def test_a_wrapper_outage_delays_settlement_without_losing_anything(
    r: redis.Redis, store: Store, wrapper: Any, wrapper_client: WrapperClient, worker: Any
) -> None:
    from tasks.credits import settle_credits

    # Given two deductions and a Wrapper that is down
    r.set(ACME.balance("user-456"), "100")
    ids = charge(store, wrapper_client, 2)
    wrapper.set_down(True)

    # When settlement runs, then nothing is acknowledged while the Wrapper is down
    settle_credits.delay("acme")
    wait_until(lambda: wrapper.dropped, timeout=10, what="a settlement attempt")
    time.sleep(0.5)
    assert outbox_len(r) == 2 and not wrapper.consumed

    # And when the Wrapper comes back, the task's own retries settle both exactly once
    wrapper.set_down(False)
    wait_until(lambda: outbox_len(r) == 0, timeout=30, what="retried settlement")
    assert sorted(wrapper.consumed) == sorted(ids)
    assert wrapper_balance(wrapper) == 98


def test_a_deduction_the_wrapper_does_not_know_is_dead_lettered(
    r: redis.Redis, store: Store, wrapper: Any, wrapper_client: WrapperClient, worker: Any
) -> None:
    from tasks.credits import settle_credits

    # Given a deduction for a user the Wrapper has no record of (the balance was cached)
    r.set(ACME.balance("ghost"), "5")
    charge(store, wrapper_client, 1, user="ghost")

    # When it is settled
    settle_credits.delay("acme")

    # Then it leaves the outbox for the dead-letter stream, with the reason
    wait_until(lambda: outbox_len(r) == 0, timeout=15, what="outbox drained")
    [(_, letter)] = r.xrange("crm:dead-letters")
    assert b"refused" in letter[b"reason"] and b"ghost" in letter[b"raw"]
    assert not wrapper.consumed


def test_the_sweep_takes_over_entries_a_dead_settler_left_pending(
    r: redis.Redis, store: Store, wrapper: Any, wrapper_client: WrapperClient, worker: Any
) -> None:
    from tasks.credits import settle_all

    # Given two deductions read by a settler that then died (pending, never acknowledged)
    ids = charge(store, wrapper_client, 2)
    r.xreadgroup(OUTBOX_GROUP, "dead-settler", {ACME.credit_outbox: ">"})
    assert r.xpending(ACME.credit_outbox, OUTBOX_GROUP)["pending"] == 2

    # When the periodic sweep runs (entries idle for more than 100 ms are taken over)
    time.sleep(0.2)
    settle_all.delay(guard=False, claim_idle_ms=100)

    # Then both are settled exactly once
    wait_until(lambda: outbox_len(r) == 0, timeout=15, what="sweep settled")
    assert sorted(wrapper.consumed) == sorted(ids)
    assert r.xpending(ACME.credit_outbox, OUTBOX_GROUP)["pending"] == 0


def test_a_second_beat_does_not_sweep_twice(r: redis.Redis, worker: Any) -> None:
    from tasks.credits import settle_all

    # Given one sweep already ran this interval; when another beat's sweep runs, it skips
    assert settle_all.apply(kwargs={"guard": True}).get()["skipped"] is False
    assert settle_all.apply(kwargs={"guard": True}).get()["skipped"] is True


def test_beat_sweeps_the_outbox_periodically(settings: Any) -> None:
    schedule = celery_config(settings)["beat_schedule"]["settle-credits-sweep"]
    assert schedule == {"task": "crmcache.settle_all", "schedule": settings.settle_sweep_interval}


@pytest.fixture
def private_broker(redis_server: Any) -> Iterator[str]:
    """A broker database only the subprocess worker consumes (the session worker uses db 1)."""
    url = f"redis://127.0.0.1:{redis_server.port}/2"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.mark.slow
def test_a_settlement_worker_killed_mid_send_loses_nothing_and_charges_once(
    r: redis.Redis,
    store: Store,
    settings: Any,
    wrapper: Any,
    wrapper_client: WrapperClient,
    worker: Any,
    private_broker: str,
) -> None:
    from tasks.credits import settle_credits

    # Given three deductions and a Wrapper whose first consume call takes 4 s
    ids = charge(store, wrapper_client, 3)
    wrapper.set_fault(delay=4.0, path_prefix="/api/credits/consume", times=1)
    # ... and a real prefork worker (its own process) settling them
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool=prefork",
            "-c",
            "1",
            "-Q",
            CREDITS_QUEUE,
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        cwd=REPO,
        env={**os.environ, "CELERY_BROKER_URL": private_broker},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sender = Celery("kill-test")
    sender.conf.update(
        celery_config(settings.model_copy(update={"celery_broker_url": private_broker}))
    )
    try:
        sender.send_task(
            "crmcache.settle_credits",
            args=("acme",),
            queue=CREDITS_QUEUE,
            routing_key=CREDITS_QUEUE,
        )

        # When the worker is SIGKILLed while its first consume call is in flight
        wait_until(lambda: wrapper.consume_calls, timeout=60, what="the first consume call")
        assert r.xpending(ACME.credit_outbox, OUTBOX_GROUP)["pending"] >= 1
        assert not wrapper.consumed
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        sender.close()

    # And the sweep takes over what it left pending
    time.sleep(0.3)
    settle_credits.delay("acme", claim_idle_ms=200)

    # Then every deduction reached the Wrapper, each charged exactly once
    wait_until(lambda: outbox_len(r) == 0, timeout=30, what="outbox drained after the kill")
    wait_until(lambda: len(wrapper.consumed) == 3, timeout=10, what="three consumed")
    assert sorted(wrapper.consumed) == sorted(ids)
    assert wrapper.consume_calls[ids[0]] == 2  # sent twice (the first answer was lost) ...
    assert wrapper_balance(wrapper) == 97  # ... charged once
