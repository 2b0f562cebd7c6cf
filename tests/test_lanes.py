"""Fair sharing between tenants, pure logic: which tenants take the bulk lane, and how a bulk
tenant's events are batched (consumer/ingest/lanes.py, consumer/ingest/batcher.py)."""

from __future__ import annotations

import pytest

from consumer.ingest.batcher import Batcher
from consumer.ingest.lanes import BULK, INTERACTIVE, URGENT, LaneRouter, lane_batches
from crmcache.events import Event


def event(tenant: str) -> Event:
    data = {"operationCode": "op", "newValue": 1}  # not a revocation (those skip the bulk wait)
    return Event(tenant, "credit-configs", "credit-config-changed", data)


@pytest.mark.parametrize(
    ("bursts", "bulk"),
    [
        ([(0.0, 150)], False),  # under the threshold
        ([(0.0, 150), (0.1, 100)], True),  # 250 within a tenth of a second
        ([(0.0, 150), (5.0, 100)], False),  # the first burst has decayed
        ([(t / 100, 10) for t in range(100)], True),  # 1,000 events/s, steadily
        ([(t / 10, 1) for t in range(100)], False),  # 10 events/s for ten seconds
    ],
)
def test_a_tenant_is_bulk_when_it_sends_more_than_the_threshold_within_about_a_second(
    bursts: list[tuple[float, int]], bulk: bool
) -> None:
    router = LaneRouter(threshold=200)
    for at, count in bursts:
        router.observe([("flood", count)], at)
    assert router.is_bulk("flood") is bulk


def test_a_bulk_tenant_returns_to_the_interactive_lane_when_its_rate_falls() -> None:
    router = LaneRouter(threshold=200)
    router.observe([("flood", 1000)], 0.0)
    router.observe([("flood", 1)], 1.0)  # ~369 within the last second: still over half
    assert router.is_bulk("flood")
    router.observe([("flood", 1)], 3.0)  # ~50
    assert not router.is_bulk("flood")
    assert router.bulk == frozenset()


def test_other_tenants_stay_interactive_while_one_floods() -> None:
    router = LaneRouter(threshold=200)
    for i in range(100):
        router.observe([("flood", 100), ("quiet", 1)], i / 100)
    assert router.bulk == {"flood"}


def test_quiet_tenants_are_forgotten() -> None:
    router = LaneRouter(threshold=200)
    router.observe([(f"t{i}", 1) for i in range(500)], 0.0)
    for i in range(1000):
        router.observe([], 100.0 + i)
    assert router.rate("t1", 2000.0) == 0.0
    assert len(router._rates) == 0


def bulk_batcher() -> Batcher:
    batcher = Batcher(batch_size=100, flush_interval=0.005, bulk_batch_size=500)
    batcher.bulk_flush_interval = 0.05
    batcher.bulk = frozenset({"flood"})
    return batcher


def test_a_flush_for_a_quiet_tenant_leaves_a_young_bulk_batch_to_grow() -> None:
    # Given a bulk tenant's 300 pending events and one quiet event, 5 ms old
    batcher = bulk_batcher()
    for _ in range(300):
        batcher.add(event("flood"), now=10.0)
    batcher.add(event("quiet"), now=10.0)
    # Then the quiet event is due, and a flush sends it alone
    assert batcher.due(now=10.005, idle=False)
    assert list(batcher.drain(now=10.005, everything=False)) == ["quiet"]
    assert len(batcher) == 300


@pytest.mark.parametrize(
    ("count", "now", "due"),
    [(499, 10.01, False), (500, 10.0, True), (1, 10.05, True), (1, 10.049, False)],
)
def test_on_a_busy_socket_a_bulk_batch_is_due_when_full_or_old(
    count: int, now: float, due: bool
) -> None:
    batcher = bulk_batcher()
    for _ in range(count):
        batcher.add(event("flood"), now=10.0)
    assert batcher.due(now=now, idle=False) is due
    assert (len(batcher.drain(now=now, everything=False)) == 1) is due


def test_an_idle_socket_sends_a_bulk_tenants_events_at_once() -> None:
    # Given a bulk tenant whose pipeline keeps up (the socket is idle between its events)
    batcher = bulk_batcher()
    batcher.add(event("flood"), now=10.0)
    # Then its lone event is due at once, as any tenant's
    assert batcher.due(now=10.0, idle=True)
    assert batcher.wait_time(now=10.0, ceiling=1.0) == 0.0
    assert list(batcher.drain(now=10.0, everything=True)) == ["flood"]


def test_draining_everything_includes_young_bulk_batches() -> None:
    batcher = bulk_batcher()
    batcher.add(event("flood"), now=10.0)
    assert list(batcher.drain(now=10.0)) == ["flood"]
    assert len(batcher) == 0


def test_a_bulk_tenant_s_revocations_take_the_interactive_lane_in_a_batch_of_their_own() -> None:
    suspend = Event("acme", "users", "user-changed", {"userId": "u", "status": "suspended"})
    events = [event("acme"), suspend, event("acme"), event("acme")]
    bodies = ["cost1", "suspend", "cost2", "cost3"]
    assert list(lane_batches(events, bodies, True, 100, 2)) == [
        (INTERACTIVE, ["suspend"]),
        (BULK, ["cost1", "cost2"]),
        (BULK, ["cost3"]),
    ]
    assert list(lane_batches(events, bodies, False, 3, 2)) == [
        (INTERACTIVE, ["cost1", "suspend", "cost2"]),
        (INTERACTIVE, ["cost3"]),
    ]


def test_with_the_urgent_lane_every_tenant_s_revocations_leave_first_on_it() -> None:
    # Given a batch of an interactive tenant, and one of a bulk tenant, holding a suspension
    suspend = Event("acme", "users", "user-changed", {"userId": "u", "status": "suspended"})
    events = [event("acme"), suspend, event("acme")]
    bodies = ["cost1", "suspend", "cost2"]
    # Then the suspension leaves first, on the urgent lane, and the rest on the tenant's lane
    assert list(lane_batches(events, bodies, False, 100, 2, urgent_lane=True)) == [
        (URGENT, ["suspend"]),
        (INTERACTIVE, ["cost1", "cost2"]),
    ]
    assert list(lane_batches(events, bodies, True, 100, 1, urgent_lane=True)) == [
        (URGENT, ["suspend"]),
        (BULK, ["cost1"]),
        (BULK, ["cost2"]),
    ]
