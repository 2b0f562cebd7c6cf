"""A preload (resync) racing with events never loses the newer value (README.md, "What we promise").

Model: the Wrapper starts from `truth`; events 1..n change it in order. The preload takes its
start stamp S0 after event k was received, so its snapshot is `truth` + events 1..k. Events,
their redeliveries and the snapshot's chunks and commit run in any interleaving; the cache must
end equal to `truth` + every event, in order, and stale entries the Wrapper never had must go.
"""

from __future__ import annotations

import random
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmcache.events import Event
from crmcache.keyspace import DataClass
from crmcache.preload import PRELOADED
from crmcache.store import Store
from tests.test_store_ordering import KEYS, TENANT, cache_state, event_payloads, model_apply, stamp


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.lists(event_payloads(), max_size=6),
    garbage=st.dictionaries(st.sampled_from(["gone-1", "gone-2"]), st.integers(0, 9)),
    events=st.lists(event_payloads(), min_size=1, max_size=15),
    split=st.integers(0, 15),
    chunk_size=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_preload_racing_with_events_never_loses_the_newer_value(
    r: redis.Redis,
    store: Store,
    initial: list[tuple[str, dict[str, Any]]],
    garbage: dict[str, int],
    events: list[tuple[str, dict[str, Any]]],
    split: int,
    chunk_size: int,
    seed: int,
) -> None:
    r.flushdb()
    rnd = random.Random(seed)
    k = min(split, len(events))
    # Given a cache holding entries the Wrapper no longer has, and the Wrapper's initial truth
    seq = 0
    for op, cost in garbage.items():
        seq += 1
        event = stamp("credit-config-changed", {"operationCode": op, "newValue": cost}, seq)
        store.apply_events(TENANT, [event])
    truth_events: list[Event] = []
    for event_type, data in initial:
        seq += 1
        truth_events.append(stamp(event_type, data, seq))
    # ... events 1..k received before the preload began, S0, then events k+1..n
    stamped: list[Event] = []
    for event_type, data in events[:k]:
        seq += 1
        stamped.append(stamp(event_type, data, seq))
    r.set(KEYS.seq, seq)  # the subscriber's receipt counter has handed out stamps up to here
    s0 = store.begin_snapshot(TENANT)
    assert s0.seq > seq
    seq = s0.seq
    for event_type, data in events[k:]:
        seq += 1
        stamped.append(stamp(event_type, data, seq))
    snapshot = model_apply(truth_events + stamped[:k])

    # When the snapshot's chunks and commit interleave with the events (some delivered twice)
    steps: list[tuple[str, Any]] = [("event", e) for e in stamped]
    steps += [("event", e) for e in stamped if rnd.random() < 0.3]
    rnd.shuffle(steps)
    snapshot_steps: list[tuple[str, Any]] = []
    for data_class in PRELOADED:
        items = sorted(snapshot[data_class.value].items())
        for start in range(0, len(items), chunk_size):
            snapshot_steps.append(("chunk", (data_class, items[start : start + chunk_size])))
        snapshot_steps.append(("commit", data_class))
    positions = sorted(rnd.randint(0, len(steps)) for _ in snapshot_steps)
    for offset, (position, step) in enumerate(zip(positions, snapshot_steps, strict=True)):
        steps.insert(position + offset, step)
    for kind, arg in steps:
        if kind == "event":
            store.apply_events(TENANT, [arg])
        elif kind == "chunk":
            store.write_snapshot_chunk(TENANT, arg[0], s0, arg[1])
        else:
            store.commit_snapshot(TENANT, arg, s0)

    # Then the cache holds the Wrapper's final truth: nothing newer lost, nothing resurrected
    expected = model_apply(truth_events + stamped)
    actual = cache_state(r)
    for data_class in PRELOADED:
        assert actual[data_class.value] == expected[data_class.value], data_class


def test_superseded_snapshot_writes_nothing(r: redis.Redis, store: Store) -> None:
    # Given two preloads; the later one (higher S0) commits first
    older, newer = store.begin_snapshot(TENANT), store.begin_snapshot(TENANT)
    store.write_snapshot(TENANT, DataClass.CREDIT_COSTS, newer, [("op", "2")])
    # When the older one tries to write and commit
    written, removed = store.write_snapshot(TENANT, DataClass.CREDIT_COSTS, older, [("op", "1")])
    # Then it is refused and the newer snapshot stands
    assert (written, removed) == (-1, 0)
    assert r.hget(KEYS.values(DataClass.CREDIT_COSTS), "op") == b"2"
