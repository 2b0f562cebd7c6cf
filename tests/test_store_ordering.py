"""The store's ordering guarantees (README.md, "What we promise"), checked against a real Redis.

The reference model is "apply each event once, in publish order"; hypothesis generates event
sequences, duplicates and reorders them, applies them from concurrent threads (the same code
path as concurrent apply_events tasks), and checks the cache ends equal to the model.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmcache.events import Event, parse_envelope, plan_writes
from crmcache.keyspace import DATA_CLASSES, DataClass, RefKind, TenantKeys
from crmcache.store import Store

TENANT = "acme"
KEYS = TenantKeys.of(TENANT)

OPS = ("crm.leads.create", "crm.reports.export")
ROLES = ("sales", "admin")
USERS = ("u1", "u2")


def event_payloads() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    cost = st.sampled_from(OPS).flatmap(
        lambda op: st.one_of(
            st.integers(0, 9).map(
                lambda v: ("credit-config-changed", {"operationCode": op, "newValue": v})
            ),
            st.just(("credit-config-deleted", {"operationCode": op})),
        )
    )
    role = st.sampled_from(ROLES).flatmap(
        lambda rid: st.one_of(
            st.lists(st.sampled_from(["crm.leads.*", "crm.contacts.view", "*"]), max_size=2).map(
                lambda p: ("role-changed", {"roleId": rid, "permissions": p})
            ),
            st.just(("role-deleted", {"roleId": rid})),
        )
    )
    user = st.sampled_from(USERS).flatmap(
        lambda uid: st.one_of(
            st.fixed_dictionaries(
                {"userId": st.just(uid)},
                optional={
                    "status": st.sampled_from(["active", "suspended"]),
                    "roles": st.lists(st.sampled_from(ROLES), max_size=2),
                },
            ).map(lambda d: ("user-changed", d)),
            st.just(("user-deleted", {"userId": uid})),
        )
    )
    return st.one_of(cost, role, user)


@st.composite
def stamped_sequences(draw: st.DrawFn, with_versions: bool | None = None) -> list[Event]:
    """A publish-ordered sequence of stamped events, as the subscriber hands them on."""
    payloads = draw(st.lists(event_payloads(), min_size=1, max_size=25))
    use_versions = draw(st.booleans()) if with_versions is None else with_versions
    versions: dict[str, int] = {}
    events: list[Event] = []
    for seq, (event_type, data) in enumerate(payloads, start=1):
        entity = event_type.split("-")[0] + str(
            data.get("operationCode") or data.get("roleId") or data.get("userId")
        )
        envelope: dict[str, Any] = {"eventType": event_type, "data": data, "eventId": f"e{seq}"}
        if use_versions and draw(st.booleans()):
            versions[entity] = versions.get(entity, 0) + 1
            envelope["version"] = versions[entity]
        event = parse_envelope(TENANT, "users", envelope)
        events.append(Event(**{**event.__dict__, "seq": seq}))
    return events


def model_apply(events: Iterable[Event]) -> dict[str, dict[str, str]]:
    """The reference: every event applied once, in order (duplicate ids skipped)."""
    state: dict[str, dict[str, str]] = {c.value: {} for c in DATA_CLASSES}
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        if event.event_id:
            seen.add(event.event_id)
        for write in plan_writes(event).writes:
            if write.value is None:
                state[write.data_class.value].pop(write.field, None)
            else:
                state[write.data_class.value][write.field] = write.value
    return state


def cache_state(r: redis.Redis) -> dict[str, dict[str, str]]:
    return {
        c.value: {k.decode(): v.decode() for k, v in r.hgetall(KEYS.values(c)).items()}
        for c in DATA_CLASSES
    }


def apply_concurrently(store: Store, batches: list[list[Event]], threads: int = 4) -> None:
    """Apply batches from several threads at once, as concurrent workers would."""
    queue = list(batches)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                batch = queue.pop()
            try:
                store.apply_events(TENANT, batch)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors


def shuffled_batches(events: list[Event], rnd: random.Random, dup_rate: float) -> list[list[Event]]:
    """Duplicate some events (redelivery), shuffle everything, cut into batches."""
    delivered = list(events) + [e for e in events if rnd.random() < dup_rate]
    rnd.shuffle(delivered)
    batches: list[list[Event]] = []
    while delivered:
        size = rnd.randint(1, 5)
        batches.append(delivered[:size])
        delivered = delivered[size:]
    return batches


SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(events=stamped_sequences(), seed=st.integers(0, 2**32), dup_rate=st.floats(0, 0.6))
def test_any_reordering_and_duplication_ends_equal_to_in_order(
    r: redis.Redis, store: Store, events: list[Event], seed: int, dup_rate: float
) -> None:
    # Given a publish-ordered event sequence, delivered shuffled, duplicated and in batches
    r.flushdb()
    batches = shuffled_batches(events, random.Random(seed), dup_rate)
    # When concurrent workers apply the batches
    apply_concurrently(store, batches)
    # Then the cache equals applying every event once, in order
    assert cache_state(r) == model_apply(events)


@SETTINGS
@given(events=stamped_sequences(), seed=st.integers(0, 2**32))
def test_republished_event_id_is_a_no_op(
    r: redis.Redis, store: Store, events: list[Event], seed: int
) -> None:
    # Given the Wrapper re-published some events (same eventId, same stamp: the subscriber
    # keeps the first copy's stamp) and a copy arrives out of order
    r.flushdb()
    rnd = random.Random(seed)
    republished = events + [rnd.choice(events) for _ in range(3)]
    rnd.shuffle(republished)
    # When applied one by one
    for event in republished:
        store.apply_events(TENANT, [event])
    # Then each id took effect once
    assert cache_state(r) == model_apply(events)


def stamp(event_type: str, data: dict[str, Any], seq: int, **envelope: Any) -> Event:
    event = parse_envelope(TENANT, "users", {"eventType": event_type, "data": data, **envelope})
    return Event(**{**event.__dict__, "seq": seq})


def test_late_older_write_does_not_resurrect_a_deleted_value(r: redis.Redis, store: Store) -> None:
    # Given a cost set at seq 1 and deleted at seq 2, the delete applied first
    store.apply_events(TENANT, [stamp("credit-config-deleted", {"operationCode": "op"}, 2)])
    # When the older set arrives late
    result = store.apply_events(
        TENANT, [stamp("credit-config-changed", {"operationCode": "op", "newValue": 3}, 1)]
    )
    # Then the tombstone refuses it
    assert result.written == 0 and result.stale == 1
    assert r.hget(KEYS.values(DataClass.CREDIT_COSTS), "op") is None


def test_upstream_version_beats_a_newer_receipt_stamp(r: redis.Redis, store: Store) -> None:
    # Given version 5 applied; a dead-letter replay of version 4 gets a newer receipt stamp
    store.apply_events(
        TENANT, [stamp("role-changed", {"roleId": "a", "permissions": ["x"]}, 10, version=5)]
    )
    # When the replay arrives
    store.apply_events(
        TENANT, [stamp("role-changed", {"roleId": "a", "permissions": ["old"]}, 99, version=4)]
    )
    # Then the version decides, not the stamp
    assert r.hget(KEYS.values(DataClass.ROLES), "a") == b'["x"]'


def test_invalidation_deletes_entry_and_lease_so_inflight_fetch_cannot_write_back(
    r: redis.Redis, store: Store
) -> None:
    # Given a cached profile and a read-through fetch holding a lease
    r.set(KEYS.ref(RefKind.PROFILE, "u1"), '{"name": "old"}')
    r.set(KEYS.lease(RefKind.PROFILE, "u1"), "token-1")
    # When user-changed for u1 is applied
    store.apply_events(TENANT, [stamp("user-changed", {"userId": "u1", "status": "active"}, 1)])
    # Then the entry and the lease are gone (the fetch's lease-checked fill will be refused)
    assert r.exists(KEYS.ref(RefKind.PROFILE, "u1"), KEYS.lease(RefKind.PROFILE, "u1")) == 0


def test_applied_batch_bumps_version_and_notifies_readers(r: redis.Redis, store: Store) -> None:
    pubsub = r.pubsub()
    pubsub.subscribe(KEYS.changes_channel)
    pubsub.get_message(timeout=1)
    try:
        result = store.apply_events(
            TENANT, [stamp("credit-config-changed", {"operationCode": "op", "newValue": 0}, 1)]
        )
        message = pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
    assert result.version == 1
    assert message is not None and json.loads(message["data"])["version"] == 1
    assert r.hget(KEYS.meta, "version") == b"1"


def test_repeated_event_id_with_a_fresh_stamp_is_a_no_op(r: redis.Redis, store: Store) -> None:
    # Given A (id "a") and then B applied; A is re-published after a subscriber failover, so
    # its copy carries a fresh, higher stamp
    first = {"operationCode": "op", "newValue": 5}
    store.apply_events(TENANT, [stamp("credit-config-changed", first, 1, eventId="a")])
    store.apply_events(
        TENANT, [stamp("credit-config-changed", {"operationCode": "op", "newValue": 6}, 2)]
    )
    # When the copy arrives
    result = store.apply_events(TENANT, [stamp("credit-config-changed", first, 3, eventId="a")])
    # Then it changes nothing: B's value stays
    assert result.duplicates == 1
    assert r.hget(KEYS.values(DataClass.CREDIT_COSTS), "op") == b"6"


def test_top_up_of_an_uncached_balance_stops_an_inflight_read_through(
    r: redis.Redis, store: Store
) -> None:
    # Given a read-through of u1's balance in flight (it holds the lease), nothing cached yet
    r.set(KEYS.lease(RefKind.CREDITS, "u1"), "token-1")
    # When a top-up is applied
    store.apply_events(
        TENANT, [stamp("user-credits-changed", {"userId": "u1", "delta": 5}, 1, eventId="t1")]
    )
    # Then the lease is gone, so the fetch (which may predate the top-up) cannot fill it
    assert not r.exists(KEYS.lease(RefKind.CREDITS, "u1"))
    assert not r.exists(KEYS.balance("u1"))
