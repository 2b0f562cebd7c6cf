"""What Redis pub/sub and Celery really do to the pipeline: killed connections, a restarted
Redis, a half-open TCP connection, a worker killed mid-batch, a dead active subscriber."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import EVENTS_QUEUE, celery_config
from config.settings import load_settings
from crmcache import keyspace
from crmcache.event_validation import STREAM_OF
from crmcache.events import parse_message
from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper
from tests.conftest import wait_until
from tests.processes import Proc, child_pids, running, subscriber_args, worker_args
from tests.tcp_proxy import TcpProxy

ACME = TenantKeys.of("acme")


def cost_json(op: str, value: float) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": op, "newValue": value}}
    )


def cost(r: redis.Redis, keys: TenantKeys, op: str) -> bytes | None:
    return r.hget(keys.values(DataClass.CREDIT_COSTS), op)


def test_client_kill_of_the_subscription_is_healed_by_a_resync(
    r: redis.Redis, wrapper: Any, subscriber: Any, store: Any
) -> None:
    wait_until(lambda: store.is_ready("acme"), what="initial resync of acme")
    # Given a change at the Wrapper whose event never reached the subscriber
    wrapper.set_credit_cost("acme", "crm.leads.create", 7, publish=False)
    # When Redis kills every pub/sub connection
    assert r.client_kill_filter(_type="pubsub") >= 1
    # Then the subscriber resubscribes and its resync brings the lost change
    wait_until(lambda: cost(r, ACME, "crm.leads.create") == b"7", what="healed cost")
    assert subscriber.subscriber.stats["subscribes"] >= 2
    assert subscriber.subscriber.stats["reconnects"] >= 1


def test_half_open_connection_is_detected_and_replaced(
    r: redis.Redis, start_subscriber: Any, settings: Any, redis_server: RedisServer
) -> None:
    proxy = TcpProxy(redis_server.port)
    try:
        running_sub = start_subscriber(redis_url=proxy.url)
        sub = running_sub.subscriber
        wait_until(lambda: sub.stats["subscribes"] >= 1, what="subscription")
        # When the connection goes silent without closing (no FIN, no RST)
        proxy.freeze()
        # Then the subscriber notices the silence and subscribes again over a new connection
        wait_until(lambda: sub.stats["subscribes"] >= 2, timeout=15, what="resubscription")
        keys = TenantKeys.of("halfopen")
        body = cost_json("x", 3)
        wait_until(lambda: r.publish(keys.channel("credit-configs"), body) == 1, what="listening")
        wait_until(lambda: cost(r, keys, "x") == b"3", what="event after the reconnect")
    finally:
        proxy.close()


@pytest.fixture
def private_stack(tmp_path: Path, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A private Redis and Wrapper, for tests that restart or kill things."""
    server = RedisServer().start()
    wrapper = SandboxWrapper(redis_url=server.url, token="test-token").start()
    proc_env = {
        **os.environ,
        "REDIS_URL": server.url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
        "WRAPPER_API_URL": wrapper.url,
        "CRM_LOG_LEVEL": "INFO",
    }
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        yield {"server": server, "wrapper": wrapper, "env": proc_env, "r": client, "tmp": tmp_path}
    finally:
        client.close()
        wrapper.stop()
        server.cleanup()


@pytest.mark.slow
def test_pipeline_survives_a_redis_restart_and_resyncs(private_stack: dict[str, Any]) -> None:
    server, wrapper, r = private_stack["server"], private_stack["wrapper"], private_stack["r"]
    tmp, env = private_stack["tmp"], private_stack["env"]
    worker = Proc(worker_args(), env, tmp / "worker.log")
    sub = Proc(subscriber_args(), env, tmp / "subscriber.log")
    with running(worker, sub):
        wait_until(lambda: r.hget(ACME.meta, "ready") == b"1", timeout=30, what="first preload")
        # When Redis restarts (it keeps nothing on disk: the cache is gone) while the Wrapper
        # changes a cost whose event cannot be delivered
        server.stop()
        wrapper.set_credit_cost("acme", "crm.leads.create", 9, publish=False)
        time.sleep(1)
        server.start()
        # Then the subscriber reconnects and its resync rebuilds the cache, new value included
        wait_until(
            lambda: cost(r, ACME, "crm.leads.create") == b"9",
            timeout=40,
            what=lambda: f"resync after restart\n{sub.output()[-2000:]}",
        )
        # And events flow again end to end
        wrapper.set_credit_cost("acme", "crm.reports.export", 11)
        wait_until(
            lambda: cost(r, ACME, "crm.reports.export") == b"11",
            timeout=20,
            what="event after restart",
        )


def stamped_bodies(tenant: str, seq: int, raw_events: list[str]) -> list[dict[str, Any]]:
    bodies = []
    for i, raw in enumerate(raw_events):
        stream = STREAM_OF[json.loads(raw)["eventType"]]
        event = parse_message(f"crm:{tenant}:{stream}", raw)
        bodies.append(replace(event, seq=seq + i).to_task())
    return bodies


@pytest.mark.slow
def test_worker_killed_mid_batch_gets_it_again_and_applies_it_once(
    private_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, r, tmp = private_stack["server"], private_stack["r"], private_stack["tmp"]
    # The worker reaches the cache through a proxy that can hold Redis's replies in flight
    proxy = TcpProxy(server.port)
    env = {**private_stack["env"], "REDIS_URL": proxy.url}
    # Celery reads CELERY_BROKER_URL from the environment over its configuration
    monkeypatch.setenv("CELERY_BROKER_URL", env["CELERY_BROKER_URL"])
    app = Celery("chaos-test")
    app.conf.update(celery_config(load_settings()))
    keys = TenantKeys.of("chaos")
    r.set(keys.balance("u1"), "10")
    r.script_load(keyspace.lua_source("apply_events"))  # so the batch is one EVALSHA
    worker = Proc(worker_args(pool="prefork", concurrency=1), env, tmp / "worker.log")
    try:
        with running(worker):
            # Given a warmed-up worker child (its connection to the cache is established)
            warm = stamped_bodies(
                "warm",
                1,
                [cost_json("w", 1)],
            )
            app.send_task("crmcache.apply_events", args=("warm", warm), queue=EVENTS_QUEUE)
            wait_until(
                lambda: r.hget(TenantKeys.of("warm").values(DataClass.CREDIT_COSTS), "w"),
                timeout=30,
                what=lambda: f"warm-up task\n{worker.output()[-3000:]}",
            )
            (child,) = child_pids(worker.pid)
            # When a batch (a top-up and a cost) is applied by Redis but the reply is held, and
            # the worker child is killed while it waits for it
            proxy.hold("down")
            batch = stamped_bodies(
                "chaos",
                1,
                [
                    '{"eventType": "user-credits-changed", "data": {"userId": "u1", "delta": 5}}',
                    cost_json("c", 2),
                ],
            )
            task_id = app.send_task(
                "crmcache.apply_events", args=("chaos", batch), queue=EVENTS_QUEUE
            ).id
            wait_until(
                lambda: r.hget(keys.values(DataClass.CREDIT_COSTS), "c") == b"2",
                timeout=20,
                what="the batch applied in Redis",
            )
            wait_until(lambda: proxy.held_bytes > 0, what="the reply held in flight")
            os.kill(child, signal.SIGKILL)
            proxy.release()
            # Then the batch is delivered again to a new child, and its effect counts once
            wait_until(
                lambda: worker.output().count(f"apply_events[{task_id}] received") >= 2,
                timeout=30,
                what=lambda: f"redelivery\n{worker.output()[-3000:]}",
            )
            wait_until(
                lambda: f"apply_events[{task_id}] succeeded" in worker.output(),
                timeout=30,
                what=lambda: f"the redelivered batch done\n{worker.output()[-3000:]}",
            )
            assert child not in child_pids(worker.pid)
            assert r.get(keys.balance("u1")) == b"15"
            assert r.hget(keys.values(DataClass.CREDIT_COSTS), "c") == b"2"
    finally:
        app.close()
        proxy.close()


def leader_pid(r: redis.Redis) -> int | None:
    token = r.get(keyspace.LEADER)
    return int(token.decode().split(":")[1]) if token else None


@pytest.mark.slow
def test_standby_takes_over_within_five_seconds_when_the_active_one_dies(
    r: redis.Redis, env: dict[str, str], worker: Any, tmp_path: Path
) -> None:
    proc_env = {**os.environ, "CRM_LOG_LEVEL": "INFO"}
    active = Proc(subscriber_args(), proc_env, tmp_path / "active.log")
    with running(active):
        wait_until(lambda: leader_pid(r) == active.pid, timeout=20, what="first leader")
        standby = Proc(subscriber_args(), proc_env, tmp_path / "standby.log")
        with running(standby):
            time.sleep(1.0)
            assert leader_pid(r) == active.pid  # the standby waits
            # When the active subscriber dies without a goodbye
            active.signal(signal.SIGKILL)
            died = time.monotonic()
            # Then the standby leads within 5 s and events flow through it
            wait_until(lambda: leader_pid(r) == standby.pid, timeout=5, what="takeover")
            keys = TenantKeys.of("takeover")
            body = cost_json("t", 4)
            wait_until(
                lambda: r.publish(keys.channel("credit-configs"), body) == 1,
                timeout=5,
                what="standby listening",
            )
            assert time.monotonic() - died < 5
            wait_until(lambda: cost(r, keys, "t") == b"4", what="event via the new leader")


def test_sigterm_flushes_and_exits_zero(
    r: redis.Redis, env: dict[str, str], tmp_path: Path
) -> None:
    sub = Proc(subscriber_args(), {**os.environ, "CRM_LOG_LEVEL": "INFO"}, tmp_path / "sub.log")
    with running(sub):
        wait_until(lambda: leader_pid(r) == sub.pid, timeout=20, what="subscriber leading")
        sub.signal(signal.SIGTERM)
        assert sub.popen.wait(timeout=10) == 0
    assert "stopped" in sub.output()
    assert r.get(keyspace.LEADER) is None  # it handed the lease back
