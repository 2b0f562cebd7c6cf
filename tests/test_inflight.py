"""The subscriber's in-flight batches (consumer/ingest/inflight.py) and the batch record they
rely on (apply_events.lua), against a real Redis; re-sending a batch changes nothing."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.ingest.inflight import InFlight
from crmcache.events import Event, parse_envelope
from crmcache.keyspace import DATA_CLASSES, TenantKeys
from crmcache.store import APPLIED_BATCH_RECORD_MS, Store

TENANT = "acme"
KEYS = TenantKeys.of(TENANT)


def cost(seq: int, value: int = 1, **envelope: Any) -> Event:
    data = {"operationCode": f"op{seq % 3}", "newValue": value}
    event = parse_envelope(
        TENANT, "credit-configs", {"eventType": "credit-config-changed", "data": data, **envelope}
    )
    return Event(**{**event.__dict__, "seq": seq})


def bodies(events: list[Event]) -> list[dict[str, Any]]:
    return [event.to_task() for event in events]


class RecordingSender:
    """Stands in for the Celery enqueuer: keeps what the subscriber sends."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[dict[str, Any]], bool]] = []
        self.resyncs: list[str | None] = []

    def apply_events(self, tenant: str, events: list[dict[str, Any]], bulk: bool = False) -> None:
        self.batches.append((tenant, events, bulk))

    def preload(self, tenant: str | None, reason: str) -> None:
        self.resyncs.append(tenant)


def tracker(store: Store, timeout: float = 5.0, max_resends: int = 3) -> tuple[InFlight, Any]:
    sender = RecordingSender()
    return InFlight(store, sender, Counter(), timeout, max_resends), sender


def test_apply_events_records_each_batch_by_its_highest_stamp(r: redis.Redis, store: Store) -> None:
    # Given a batch applied, then one whose writes are all stale (it ran, changed nothing)
    store.apply_events(TENANT, [cost(7), cost(5), cost(6)])
    store.apply_events(TENANT, [cost(3)])
    # Then both are recorded by their highest stamps, nothing else, for a bounded time
    assert store.applied_batches({TENANT: [7, 5, 3, 99]}) == {TENANT: {7, 3}}
    assert 0 < r.pttl(KEYS.applied_batches) <= APPLIED_BATCH_RECORD_MS


def test_an_applied_batch_is_forgotten_and_never_resent(store: Store) -> None:
    inflight, sender = tracker(store)
    batch = [cost(1), cost(2)]
    inflight.sent(TENANT, bodies(batch), False, now=0.0)
    store.apply_events(TENANT, batch)
    inflight.check(10.0)
    inflight.check(11.0)
    assert len(inflight) == 0 and sender.batches == []


def test_a_held_batch_is_resent_once_overdue_and_oldest_at_two_looks(store: Store) -> None:
    # Given two batches sent, the first held by a hung worker, the second applied
    inflight, sender = tracker(store, timeout=5.0)
    held, later = [cost(1), cost(2)], [cost(3)]
    inflight.sent(TENANT, bodies(held), True, now=0.0)
    inflight.sent(TENANT, bodies(later), True, now=0.0)
    store.apply_events(TENANT, later)
    # When the subscriber looks once a second
    for now in (1.0, 2.0, 3.0, 4.0):
        inflight.check(now)
    assert sender.batches == []  # not overdue yet
    inflight.check(5.0)
    # Then the held batch is sent again, same events, same stamps, same lane
    assert sender.batches == [(TENANT, bodies(held), True)]
    assert inflight.stats["inflight_resent"] == 1
    # And once its copy is applied it is forgotten
    store.apply_events(TENANT, held)
    inflight.check(6.0)
    assert len(inflight) == 0


def test_a_draining_backlog_is_not_resent(store: Store) -> None:
    # Given a backlog: ten overdue batches, the workers applying one between two looks
    inflight, sender = tracker(store, timeout=1.0)
    batches = [[cost(seq)] for seq in range(1, 11)]
    for batch in batches:
        inflight.sent(TENANT, bodies(batch), False, now=0.0)
    for i, batch in enumerate(batches):
        inflight.check(10.0 + i)
        store.apply_events(TENANT, batch)
    # Then the oldest batch changed at every look: nothing was sent twice
    assert sender.batches == []


def test_a_batch_never_applied_is_given_up_after_the_cap_and_its_tenant_resynced(
    store: Store,
) -> None:
    inflight, sender = tracker(store, timeout=2.0, max_resends=2)
    inflight.sent(TENANT, bodies([cost(1)]), False, now=0.0)
    for second in range(1, 20):
        inflight.check(float(second))
    assert len(sender.batches) == 2
    assert sender.resyncs == [TENANT]
    assert inflight.stats["inflight_unconfirmed"] == 1 and len(inflight) == 0


def test_a_zero_timeout_tracks_nothing(store: Store) -> None:
    inflight, sender = tracker(store, timeout=0)
    inflight.sent(TENANT, bodies([cost(1)]), False, now=0.0)
    assert len(inflight) == 0


def credit_events() -> st.SearchStrategy[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(type, data, envelope extras): costs and top-ups, some with ids, some versioned (the
    test numbers the versions: they only grow per entity, as the contract says)."""
    envelope = st.fixed_dictionaries(
        {}, optional={"eventId": st.sampled_from(["a", "b", "c"]), "version": st.just(0)}
    )
    costs = st.tuples(
        st.just("credit-config-changed"),
        st.fixed_dictionaries(
            {"operationCode": st.sampled_from(["x", "y"]), "newValue": st.integers(0, 9)}
        ),
        envelope,
    )
    top_ups = st.tuples(
        st.just("user-credits-changed"),
        st.fixed_dictionaries(
            {"userId": st.sampled_from(["u1", "u2"]), "delta": st.integers(1, 9)}
        ),
        envelope,
    )
    return st.one_of(costs, top_ups)


def state(r: redis.Redis) -> dict[str, Any]:
    hashes = {c.value: r.hgetall(KEYS.values(c)) for c in DATA_CLASSES}
    return {**hashes, "u1": r.get(KEYS.balance("u1")), "u2": r.get(KEYS.balance("u2"))}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payloads=st.lists(credit_events(), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 4), min_size=12, max_size=12),
    seed=st.integers(0, 2**32),
)
def test_resending_any_batch_after_any_later_ones_changes_nothing(
    r: redis.Redis, store: Store, payloads: list[Any], cuts: list[int], seed: int
) -> None:
    # Given stamped events (costs and top-ups, with and without ids and versions) cut into
    # batches, and balances cached
    events, versions = [], Counter[str]()
    for seq, (event_type, data, extra) in enumerate(payloads, start=1):
        stream = "users" if event_type == "user-credits-changed" else "credit-configs"
        if "version" in extra:
            entity = str(data.get("operationCode") or data.get("userId"))
            versions[entity] += 1
            extra = {**extra, "version": versions[entity]}
        envelope = {"eventType": event_type, "data": data, **extra}
        event = parse_envelope(TENANT, stream, envelope)
        events.append(Event(**{**event.__dict__, "seq": seq}))
    batches, start = [], 0
    for size in cuts:
        if start < len(events):
            batches.append(events[start : start + size])
            start += size

    def run(resent: list[list[Event]]) -> dict[str, Any]:
        r.flushdb()
        r.set(KEYS.balance("u1"), "100")
        r.set(KEYS.balance("u2"), "100")
        for batch in batches + resent:
            store.apply_events(TENANT, batch)
        return state(r)

    once = run([])
    # When some batches are sent again (same events, same stamps) after the later ones
    rnd = random.Random(seed)
    again = run([rnd.choice(batches) for _ in range(rnd.randint(1, 3))])
    # Then the cache, balances included, is as if each was applied once
    assert again == once
