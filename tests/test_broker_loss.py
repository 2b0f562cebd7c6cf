"""A Celery worker whose Redis broker is SIGKILLed with tasks in flight reconnects and applies
events again within seconds of Redis' return (config/redis_transport.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper
from tests.processes import Proc, running, subscriber_args, worker_args

ACME = TenantKeys.of("acme")
ROUNDS = 20
BUDGET_S = 90.0
RECOVERY_S = 15.0


def cost_event(op: str, value: int) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": op, "newValue": value}}
    )


class Flow:
    """Publishes a steady stream of events (~2,000/s) in a thread, across Redis restarts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sent = 0
        while not self._stop.is_set():
            client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                while not self._stop.is_set():
                    pipe = client.pipeline(transaction=False)
                    for _ in range(20):
                        sent += 1
                        pipe.publish(
                            ACME.channel("credit-configs"), cost_event(f"op{sent % 50}", sent)
                        )
                    pipe.execute()
                    time.sleep(0.01)
            except redis.RedisError:
                time.sleep(0.05)  # Redis is down: try again
            finally:
                client.close()


def applies_again(port: int, value: int, timeout: float) -> float | None:
    """Seconds until a freshly published cost is visible in the cache; None if it never is."""
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            try:
                client.publish(ACME.channel("credit-configs"), cost_event("probe", value))
                if client.hget(ACME.values(DataClass.CREDIT_COSTS), "probe") == str(value).encode():
                    return time.monotonic() - started
            except redis.RedisError:
                pass
            time.sleep(0.1)
        return None
    finally:
        client.close()


def sigkill(server: RedisServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=5)
    server.stop()


@pytest.fixture
def broker_stack(tmp_path: Path, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A private Redis (cache and broker) and Wrapper, a prefork worker and a subscriber."""
    server = RedisServer().start()
    wrapper = SandboxWrapper(redis_url=server.url, token="test-token").start()
    proc_env = {
        **os.environ,
        "REDIS_URL": server.url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
        "WRAPPER_API_URL": wrapper.url,
        "CRM_LOG_LEVEL": "INFO",
    }
    worker = Proc(worker_args(pool="prefork", concurrency=2), proc_env, tmp_path / "worker.log")
    subscriber = Proc(subscriber_args(), proc_env, tmp_path / "subscriber.log")
    try:
        with running(worker, subscriber):
            yield {"server": server, "worker": worker}
    finally:
        wrapper.stop()
        server.cleanup()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_worker_applies_events_again_after_every_broker_kill(
    broker_stack: dict[str, Any],
) -> None:
    server, worker = broker_stack["server"], broker_stack["worker"]
    assert applies_again(server.port, 1, timeout=60) is not None, worker.output()[-3000:]
    recoveries: list[float] = []
    started = time.monotonic()
    with Flow(server.port):
        while len(recoveries) < ROUNDS and time.monotonic() - started < BUDGET_S:
            # Given events flowing, so that the worker has tasks in flight and a BRPOP pending
            time.sleep(1.0)
            # When Redis (the broker and the cache) is SIGKILLed and comes back empty
            sigkill(server)
            time.sleep(0.5)
            server.start()
            # Then the same worker process applies events again within seconds
            took = applies_again(server.port, 100 + len(recoveries), RECOVERY_S)
            log = worker.output()[-5000:]
            assert worker.popen.poll() is None, f"round {len(recoveries)}: worker exited\n{log}"
            assert took is not None, f"round {len(recoveries)}: nothing applied\n{log}"
            recoveries.append(took)
    assert len(recoveries) >= 10, f"only {len(recoveries)} rounds fit in {BUDGET_S}s"
    assert "Unrecoverable error" not in worker.output()
    print(f"{len(recoveries)} broker kills, recovered in max {max(recoveries):.2f}s")
