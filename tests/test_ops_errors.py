"""The operator tools see Redis failures as the project's own ``StoreUnavailable``: inspection,
dead letters, ``status --watch`` and the redis healthcheck against a port nobody listens on (a
real client, a real refused connection), and a real Redis for what still works."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from crmcache.errors import StoreUnavailable
from crmcache.event_validation import EventLimits
from ops import dead_letters, inspection
from ops.dead_letters import DeadLetter
from ops.dev.redis_server import free_port


@pytest.fixture
def dead_redis() -> Iterator[redis.Redis]:
    client = redis.Redis(port=free_port(), socket_timeout=1, socket_connect_timeout=1)
    yield client
    client.close()


RAW = b'{"eventType": "user-changed", "data": {"userId": "u1", "status": "active"}}'
ENTRY = DeadLetter("1-0", "bad", "crm:acme:users", "acme", len(RAW), RAW, 1)
CALLS: dict[str, Callable[[redis.Redis], Any]] = {
    "known_tenants": lambda c: inspection.known_tenants(c, _no_tenants()),
    "tenant_status": lambda c: inspection.tenant_status(c, "acme"),
    "dead_letter_summary": inspection.dead_letter_summary,
    "active_subscriber": inspection.active_subscriber,
    "watch_sample": lambda c: inspection.watch_sample(c, ["acme"]),
    "tenant_contents": lambda c: inspection.tenant_contents(c, "acme", 10),
    "list_entries": lambda c: dead_letters.list_entries(c, 10),
    "get_entry": lambda c: dead_letters.get_entry(c, "1-0"),
    "replay": lambda c: dead_letters.replay(c, ENTRY, EventLimits()),
    "purge": dead_letters.purge,
}


def _no_tenants() -> Any:
    return SimpleNamespace(tenants=())  # settings without CRM_TENANTS: scan the cache


@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_unreachable_redis_raises_store_unavailable(name: str, dead_redis: redis.Redis) -> None:
    # given a client of a Redis that refuses connections, when an operator view reads it
    with pytest.raises(StoreUnavailable):
        CALLS[name](dead_redis)


def test_the_views_still_read_a_live_redis(r: redis.Redis) -> None:
    # given an empty cache, when the views read it, then they answer as before
    assert inspection.dead_letter_summary(r) == {"stored": 0, "total": 0}
    assert inspection.tenant_status(r, "acme")["ready"] is False
    assert dead_letters.list_entries(r, 10) == []


def test_the_redis_healthcheck_reports_an_unreachable_redis() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ops.healthcheck", "redis"],
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("unhealthy: redis: Redis unavailable"), done.stderr
    assert "Traceback" not in done.stderr
