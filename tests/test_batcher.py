"""Micro-batching rules (pure logic)."""

from __future__ import annotations

from consumer.ingest.batcher import Batcher
from crmcache.events import Event


def event(tenant: str = "acme") -> Event:
    data = {"operationCode": "op", "newValue": 1}
    return Event(tenant, "credit-configs", "credit-config-changed", data)


def revoke(tenant: str = "acme") -> Event:
    return Event(tenant, "users", "user-changed", {"userId": "u", "status": "suspended"})


def test_a_revocation_in_a_bulk_tenant_does_not_wait_for_the_bulk_batch() -> None:
    batcher = Batcher(100, 0.005, bulk_batch_size=1000, bulk_flush_interval=0.05)
    batcher.bulk = frozenset({"acme"})
    batcher.add(event(), now=10.0)
    assert not batcher.due(now=10.006, idle=False)  # a flood's batch waits to grow
    batcher.add(revoke(), now=10.006)
    assert batcher.due(now=10.006, idle=False)  # a suspension waits no longer than 5 ms
    assert [e.event_type for e in batcher.drain(10.006, everything=False)["acme"]] == [
        "credit-config-changed",
        "user-changed",
    ]


def test_with_revoke_at_once_a_revocation_makes_every_batch_due_at_once() -> None:
    # Given a busy socket: a bulk tenant's young batch and an interactive tenant's, just flushed
    batcher = Batcher(100, 0.005, 1000, 0.05, revoke_at_once=True)
    batcher.bulk = frozenset({"acme"})
    batcher.add(event(), now=10.0)
    batcher.drain(now=10.0)
    batcher.add(event("globex"), now=10.001)
    batcher.add(event(), now=10.001)
    assert not batcher.due(now=10.001, idle=False)
    # When a suspension arrives in the bulk tenant
    batcher.add(revoke(), now=10.001)
    # Then a flush is due at once and takes the bulk tenant's batch too, revocation and all
    assert batcher.due(now=10.001, idle=False)
    drained = batcher.drain(10.001, everything=False)
    assert [e.event_type for e in drained["acme"]] == ["credit-config-changed", "user-changed"]
    assert "globex" in drained and not batcher.due(now=10.001, idle=False)


def test_a_lone_event_is_due_at_once_when_the_socket_is_idle() -> None:
    batcher = Batcher(batch_size=100, flush_interval=0.005)
    batcher.add(event(), now=10.0)
    assert batcher.due(now=10.0, idle=True)


def test_a_busy_socket_keeps_the_batch_open_until_the_interval() -> None:
    batcher = Batcher(batch_size=100, flush_interval=0.005)
    batcher.add(event(), now=10.0)
    assert not batcher.due(now=10.001, idle=False)
    assert batcher.due(now=10.005, idle=False)


def test_a_full_batch_is_due_at_once() -> None:
    batcher = Batcher(batch_size=3, flush_interval=1.0)
    for _ in range(3):
        batcher.add(event(), now=10.0)
    assert batcher.due(now=10.0, idle=False)


def test_steady_traffic_gets_at_most_one_flush_per_interval() -> None:
    # Given a flush just happened
    batcher = Batcher(batch_size=100, flush_interval=0.005)
    batcher.add(event(), now=10.0)
    batcher.drain(now=10.0)
    # When the next event arrives 1 ms later on an idle socket
    batcher.add(event(), now=10.001)
    # Then it waits for the interval since the last flush, and no longer
    assert not batcher.due(now=10.001, idle=True)
    assert abs(batcher.wait_time(now=10.001, ceiling=1.0) - 0.004) < 1e-9
    assert batcher.due(now=10.005, idle=True)


def test_drain_keeps_receipt_order_per_tenant_and_empties() -> None:
    batcher = Batcher(batch_size=100, flush_interval=0.005)
    events = [event("a"), event("b"), event("a")]
    for e in events:
        batcher.add(e, now=1.0)
    pending = batcher.drain(now=1.0)
    assert pending == {"a": [events[0], events[2]], "b": [events[1]]}
    assert len(batcher) == 0 and not batcher.due(now=5.0, idle=True)
