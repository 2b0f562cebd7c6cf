"""Versioned events, duplicated and reordered, interleaved with snapshots: a hypothesis state
machine against a real Redis, through the store's own event and snapshot methods.

The model:
- the Wrapper publishes events in order; each entity's ``version`` grows with every event of it;
- the subscriber receives any published event, any number of times (reorders, re-publishes,
  dead-letter replays), and stamps each copy from the tenant's receipt counter as it arrives;
- workers apply the received copies in any order, in batches, some twice;
- every version's value is distinct, so that an older value can never pass for the newest;
- a preload takes S0 from the same counter, then fetches: its snapshot reflects every event
  published by then (so at least every event received before S0), and its chunks and commit
  interleave with everything else; several preloads may be in flight at once.
Once every published event has been received and applied, the cache must equal applying the
newest version of each entity, whatever happened in between.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from crmcache.events import Event, parse_envelope
from crmcache.keyspace import DataClass
from crmcache.preload import PRELOADED
from crmcache.store import Store
from tests.test_store_ordering import TENANT, cache_state, model_apply


@dataclass
class Snapshot:
    """One preload in flight: its start stamp and, per class, its chunks and commit to go."""

    s0: int
    steps: dict[DataClass, list[tuple[str, list[tuple[str, str]]]]]


KINDS = {"credit-config": "credit-configs", "role": "roles", "user": "users"}
"""One entity of each kind (and its stream), so that every event races with the others of its
kind."""


def change(kind: str, version: int, delete: bool, parts: int) -> tuple[str, dict[str, Any]]:
    """An event of `kind` at `version`: a delete, or a value no other version has (a
    user-changed sets the status (parts 1), the roles (parts 2) or both (parts 3))."""
    if kind == "credit-config":
        if delete:
            return "credit-config-deleted", {"operationCode": "crm.leads.create"}
        return "credit-config-changed", {"operationCode": "crm.leads.create", "newValue": version}
    if kind == "role":
        if delete:
            return "role-deleted", {"roleId": "sales"}
        return "role-changed", {"roleId": "sales", "permissions": [f"crm.v{version}.*"]}
    if delete:
        return "user-deleted", {"userId": "u1"}
    data: dict[str, Any] = {"userId": "u1"}
    if parts & 1:
        data["status"] = f"status-v{version}"
    if parts & 2:
        data["roles"] = [f"role-v{version}"]
    return "user-changed", data


class ResyncMachine(RuleBasedStateMachine):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        store.redis.flushdb()
        self.kinds: list[str] = list(KINDS)
        self.versions: Counter[str] = Counter()
        self.published: list[Event] = []
        self.received: set[int] = set()
        self.copies: list[Event] = []  # every stamped copy, in receipt order
        self.unapplied: list[int] = []  # indexes into copies
        self.snapshots: list[Snapshot] = []

    @initialize(kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=3, unique=True))
    def choose_kinds(self, kinds: list[str]) -> None:
        """Some runs change one kind of entity only, so that its events race more often."""
        self.kinds = kinds

    # --- the Wrapper and the subscriber -------------------------------------------------------

    @rule(
        pick=st.integers(0, 2),
        delete=st.booleans(),
        parts=st.integers(1, 3),
        with_id=st.booleans(),
    )
    def publish(self, pick: int, delete: bool, parts: int, with_id: bool) -> None:
        """The Wrapper changes (or deletes) an entity; every version's value is distinct."""
        kind = self.kinds[pick % len(self.kinds)]
        self.versions[kind] += 1
        version = self.versions[kind]
        event_type, data = change(kind, version, delete, parts)
        envelope: dict[str, Any] = {"eventType": event_type, "data": data, "version": version}
        if with_id:
            envelope["eventId"] = f"e{len(self.published)}"
        self.published.append(parse_envelope(TENANT, KINDS[kind], envelope))

    @precondition(lambda self: self.published)
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=3), again=st.booleans())
    def receive(self, picks: list[int], again: bool) -> None:
        """The subscriber receives published events: new ones, or (again) any ones again."""
        for pick in picks:
            waiting = [i for i in range(len(self.published)) if i not in self.received]
            choices = waiting if waiting and not again else range(len(self.published))
            self._receive(choices[pick % len(choices)])

    @precondition(lambda self: self.published)
    @rule(pick=st.integers(0, 10**6))
    def replay(self, pick: int) -> None:
        """Any published event arrives once more and is applied at once (a dead-letter replay,
        or a re-publish the subscriber no longer remembers)."""
        self._receive(pick % len(self.published))
        self.store.apply_events(TENANT, [self.copies[self.unapplied.pop()]])

    def _receive(self, index: int) -> None:
        seq = self.store.reserve_stamps({TENANT: 1})[TENANT]
        self.received.add(index)
        self.unapplied.append(len(self.copies))
        self.copies.append(replace(self.published[index], seq=seq))

    # --- the workers ----------------------------------------------------------------------------

    @precondition(lambda self: self.copies)
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=3), redeliver=st.booleans())
    def apply(self, picks: list[int], redeliver: bool) -> None:
        """A worker applies a batch of received copies (a redelivery repeats applied ones)."""
        pool = self.unapplied if self.unapplied and not redeliver else range(len(self.copies))
        chosen = list(dict.fromkeys(pool[p % len(pool)] for p in picks))
        self.store.apply_events(TENANT, [self.copies[i] for i in chosen])
        self.unapplied = [i for i in self.unapplied if i not in chosen]

    # --- preloads -------------------------------------------------------------------------------

    @rule()
    def begin_snapshot(self) -> None:
        """A preload takes S0, then asks the Wrapper: it gets every event published so far.

        (An event published between S0 and the fetch behaves as one published before S0 and
        received after it, which the other rules produce.)"""
        s0 = self.store.begin_snapshot(TENANT)
        truth = model_apply(self.published)
        steps = {
            c: [("chunk", [item]) for item in sorted(truth[c.value].items())] for c in PRELOADED
        }
        self.snapshots.append(Snapshot(s0, {c: [*s, ("commit", [])] for c, s in steps.items()}))

    @rule()
    def preload(self) -> None:
        """A preload from start to end at once (Store.write_snapshot: chunks, then commit)."""
        s0 = self.store.begin_snapshot(TENANT)
        truth = model_apply(self.published)
        for data_class in PRELOADED:
            items = sorted(truth[data_class.value].items())
            self.store.write_snapshot(TENANT, data_class, s0, items)

    @precondition(lambda self: any(any(s.steps.values()) for s in self.snapshots))
    @rule(pick=st.integers(0, 10**6))
    def snapshot_step(self, pick: int) -> None:
        """One preload goes on: for every class, its next chunk or its commit."""
        active = [s for s in self.snapshots if any(s.steps.values())]
        snapshot = active[pick % len(active)]
        for data_class, steps in snapshot.steps.items():
            if not steps:
                continue
            kind, chunk = steps.pop(0)
            if kind == "chunk":
                self.store.write_snapshot_chunk(TENANT, data_class, snapshot.s0, chunk)
            else:
                self.store.commit_snapshot(TENANT, data_class, snapshot.s0)

    # --- the guarantee --------------------------------------------------------------------------

    @invariant()
    def settled_means_newest(self) -> None:
        """Whenever every published event has been received and every copy applied."""
        if not self.unapplied and len(self.received) == len(self.published):
            assert cache_state(self.store.redis) == model_apply(self.published)

    @rule(order=st.randoms(use_true_random=False))
    def settle(self, order: Any) -> None:
        """Every published event not yet received arrives, and every copy waiting is applied,
        both in any order."""
        waiting = [i for i in range(len(self.published)) if i not in self.received]
        order.shuffle(waiting)
        for index in waiting:
            self._receive(index)
        order.shuffle(self.unapplied)
        while self.unapplied:
            batch, self.unapplied = self.unapplied[:3], self.unapplied[3:]
            self.store.apply_events(TENANT, [self.copies[i] for i in batch])


def test_snapshots_interleaved_with_reordered_versioned_events_keep_the_newest_version(
    r: redis.Redis, store: Store
) -> None:
    run_state_machine_as_test(
        lambda: ResyncMachine(store),
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        ),
    )
