"""Helpers shared by the read-side tests (tests/test_reader_*.py): building readers with
setting overrides, preloading a tenant through the real preload (or many tenants through the
write side's snapshot scripts), applying a cost change as the workers do, and forking a child
that reports back through a pipe."""

from __future__ import annotations

import json
import os
import select
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from config.settings import Settings
from consumer import SmartCRMConsumer
from crmcache.events import Event
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.preload import preload_tenant
from crmcache.store import Store
from crmcache.wrapper import WrapperClient


def preload(store: Store, settings: Settings, tenant: str = "acme") -> None:
    """The real preload (Wrapper -> Redis, then meta ready)."""
    client = WrapperClient(settings)
    try:
        preload_tenant(store, client, tenant)
    finally:
        client.close()


def load_snapshot(store: Store, tenant: str, data: dict[DataClass, list[tuple[str, str]]]) -> None:
    """A tenant's critical data through the write side's snapshot scripts, then marked ready
    (what a preload does, without asking the Wrapper)."""
    s0 = store.begin_snapshot(tenant)
    for data_class, items in data.items():
        store.write_snapshot(tenant, data_class, s0, items)
    store.mark_ready(tenant, s0)


def small_tenant(cost: float, users: int = 3) -> dict[DataClass, list[tuple[str, str]]]:
    """One operation (``crm.leads.create`` at ``cost``), a role granting it, active users."""
    return {
        DataClass.CREDIT_COSTS: [("crm.leads.create", json.dumps(cost))],
        DataClass.ROLES: [("sales", json.dumps(["crm.leads.*"]))],
        DataClass.USER_STATUS: [(f"user-{i}", "active") for i in range(users)],
        DataClass.USER_ROLES: [(f"user-{i}", json.dumps(["sales"])) for i in range(users)],
    }


def apply_cost(store: Store, tenant: str, op: str, value: float) -> None:
    """The workers' path: a credit-config-changed event applied (and announced) for ``tenant``."""
    seq = int(store.redis.incr(TenantKeys.of(tenant).seq))
    data = {"operationCode": op, "newValue": value}
    event = Event(tenant, "credit-configs", "credit-config-changed", data, seq=seq)
    store.apply_events(tenant, [event])


@contextmanager
def reader(
    settings: Settings, tenant: str = "acme", **overrides: Any
) -> Iterator[SmartCRMConsumer]:
    """A SmartCRMConsumer with settings overrides (field names), shut down afterwards."""
    defaults: dict[str, Any] = {"reader_requests_preload": False}
    consumer = SmartCRMConsumer(tenant, settings.model_copy(update={**defaults, **overrides}))
    try:
        yield consumer
    finally:
        consumer.shutdown()


def run_in_child(body: Callable[[], Any]) -> tuple[int, int]:
    """Fork; the child runs ``body`` and writes its JSON result (or the traceback) to a pipe.
    Returns (pid, read end of the pipe) for ``child_result``. The child never returns."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never let it return into pytest
        code = 0
        try:
            os.close(read_end)
            try:
                payload = {"ok": True, "result": body()}
            except BaseException:
                payload = {"ok": False, "error": traceback.format_exc()}
                code = 1
            os.write(write_end, json.dumps(payload, default=str).encode())
            os.close(write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def child_result(pid: int, read_end: int, timeout: float = 30.0) -> Any:
    """Wait for a ``run_in_child`` child; its result, or AssertionError with its traceback."""
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], timeout)
            if not ready:
                os.kill(pid, 9)
                raise AssertionError("forked child timed out")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    payload = json.loads(b"".join(chunks) or b'{"ok": false, "error": "no output"}')
    if not payload["ok"]:
        raise AssertionError(f"forked child failed:\n{payload['error']}")
    return payload["result"]


@contextmanager
def private_redis(settings: Settings) -> Iterator[tuple[Any, Settings, Store]]:
    """A Redis server of the test's own (to stop, restart or count commands on), the settings
    pointing at it, and a Store on it."""
    import redis

    from ops.dev.redis_server import RedisServer

    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        yield server, settings.model_copy(update={"redis_url": server.url}), Store(client)
    finally:
        client.close()
        server.cleanup()


def command_calls(client: Any, command: str) -> int:
    """How many times the server ran ``command`` (INFO commandstats)."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
