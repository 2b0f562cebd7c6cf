"""A preload that Redis outlives only in part: Redis SIGKILLed and restarted empty while a
snapshot is fetched or written. The snapshot must write nothing into the new, empty Redis and
must not mark the tenant ready there: readers then say "not ready" (a 503), never "not
configured" or "unknown user", and the new Redis's own events and resync are not refused."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from consumer import SmartCRMConsumer
from crmcache.errors import StoreUnavailable, TenantNotReady
from crmcache.events import parse_message
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.preload import PRELOADED, preload_tenant
from crmcache.redis_client import make_redis
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper
from tests.conftest import wait_until

KEYS = TenantKeys.of("acme")
OLD_SEQ = 1000
"""Stamps the subscriber handed out before the restart: the new counter starts below."""


@pytest.fixture
def lifetime(settings: Any) -> Iterator[dict[str, Any]]:
    """A private Redis (to restart) with acme's counter at OLD_SEQ, and a private Wrapper."""
    server = RedisServer().start()
    wrapper = SandboxWrapper(token="test-token").start()
    local = settings.model_copy(
        update={
            "redis_url": server.url,
            "wrapper_api_url": wrapper.url,
            "reader_requests_preload": False,
        }
    )
    client = make_redis(server.url, socket_timeout=2)
    client.set(KEYS.seq, OLD_SEQ)
    upstream = WrapperClient(local)
    try:
        yield {
            "server": server,
            "wrapper": wrapper,
            "settings": local,
            "r": client,
            "store": Store(client),
            "upstream": upstream,
        }
    finally:
        upstream.close()
        client.close()
        wrapper.stop()
        server.cleanup()


def restart_empty(server: RedisServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=5)
    server.stop()
    server.start()


def assert_not_ready_to_readers(settings: Any) -> None:
    """A reader says "not loaded" for the cost and the permission, never None or denied."""
    with SmartCRMConsumer("acme", settings=settings) as reader:
        with pytest.raises(TenantNotReady):
            reader.get_credit_cost("crm.leads.create")
        with pytest.raises(TenantNotReady):
            reader.check_permission("user-456", "crm.leads.create")


def assert_the_new_redis_heals(lifetime: dict[str, Any]) -> None:
    """An event stamped by the new counter applies, and a new preload makes acme ready."""
    store, r = lifetime["store"], lifetime["r"]
    raw = '{"eventType": "credit-config-changed", "data": {"operationCode": "x", "newValue": 4}}'
    stamp = store.reserve_stamps({"acme": 1})["acme"]
    event = parse_message("crm:acme:credit-configs", raw)
    store.apply_events("acme", [replace(event, seq=stamp)])
    assert r.hget(KEYS.values(DataClass.CREDIT_COSTS), "x") == b"4"
    preload_tenant(store, lifetime["upstream"], "acme")
    assert r.hget(KEYS.meta, "ready") == b"1"
    assert r.hget(KEYS.values(DataClass.CREDIT_COSTS), "crm.leads.create") == b"1"


def test_a_restart_while_the_wrapper_is_asked_stops_the_preload(
    lifetime: dict[str, Any],
) -> None:
    # Given a preload that began (S0 taken) and waits for the Wrapper's roles
    wrapper, store = lifetime["wrapper"], lifetime["store"]
    wrapper.set_fault(delay=1.0, path_prefix="/api/roles", times=1)
    outcome: list[BaseException | None] = []

    def preload() -> None:
        try:
            preload_tenant(store, lifetime["upstream"], "acme")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=preload)
    thread.start()
    wait_until(lambda: wrapper.requests["GET", "/api/roles"] >= 1, what="the roles fetch")
    # When Redis restarts empty before the snapshot is written
    restart_empty(lifetime["server"])
    thread.join(timeout=20)
    # Then the preload fails (to be retried) having written nothing, not even its floors
    assert isinstance(outcome[0], StoreUnavailable), outcome
    r = lifetime["r"]
    assert r.hget(KEYS.meta, "ready") is None
    assert r.hmget(KEYS.meta, [f"floor:{c.value}" for c in PRELOADED]) == [None] * len(PRELOADED)
    assert not r.exists(*(KEYS.values(c) for c in PRELOADED))
    assert_not_ready_to_readers(lifetime["settings"])
    assert_the_new_redis_heals(lifetime)


STEPS = ["chunks", "commits", "ready"]


@pytest.mark.parametrize("restart_before", STEPS)
def test_a_restart_while_the_snapshot_is_written_leaves_the_tenant_not_ready(
    lifetime: dict[str, Any], restart_before: str
) -> None:
    # Given a snapshot fetched from the Wrapper and being written step by step
    store, upstream = lifetime["store"], lifetime["upstream"]
    s0 = store.begin_snapshot("acme")
    rows = {
        DataClass.CREDIT_COSTS: [
            (c["operationCode"], str(c["creditCost"])) for c in upstream.credit_configs("acme")
        ],
        DataClass.ROLES: [("sales", '["crm.leads.*"]')],
        DataClass.USER_STATUS: [("user-456", "active")],
        DataClass.USER_ROLES: [("user-456", '["sales"]')],
    }
    steps: list[tuple[str, Any]] = [
        *(("chunks", lambda c=c: store.write_snapshot_chunk("acme", c, s0, rows[c])) for c in rows),
        *(("commits", lambda c=c: store.commit_snapshot("acme", c, s0)) for c in rows),
        ("ready", lambda: store.mark_ready("acme", s0)),
    ]
    first = next(i for i, (name, _) in enumerate(steps) if name == restart_before)
    for _, step in steps[:first]:
        step()
    # When Redis restarts empty part-way
    restart_empty(lifetime["server"])
    # Then the next step refuses to write into the new Redis, and so does every later one
    for _, step in steps[first:]:
        with pytest.raises(StoreUnavailable, match="lost its data"):
            step()
    assert lifetime["r"].hget(KEYS.meta, "ready") is None
    assert_not_ready_to_readers(lifetime["settings"])
    assert_the_new_redis_heals(lifetime)
