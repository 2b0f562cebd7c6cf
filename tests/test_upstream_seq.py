"""The upstream-seq watermark behind ``<stream>:<seq>`` consistency tokens, against a real Redis.

``upstream-seq:<stream>`` in a tenant's meta must never claim an event applied before it is:
a token ``users:N`` taken right after publishing event N is satisfied only once N (and every
event the subscriber saw before it on that stream) is applied, whatever order concurrent
workers apply the batches in; and a lost event (a gap) must not hold the watermark back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmcache.events import Event, parse_envelope
from crmcache.keyspace import META_UPSTREAM_SEQ_PREFIX, TenantKeys

TENANT = "seqs"
KEYS = TenantKeys.of(TENANT)
FIELD = f"{META_UPSTREAM_SEQ_PREFIX}users"


def _event(useq: int, prev: int | None, stamp: int) -> Event:
    envelope = {
        "eventType": "user-changed",
        "seq": useq,
        "data": {"userId": f"u{useq % 3}", "status": "active"},
    }
    event = parse_envelope(TENANT, "users", envelope)
    return replace(event, seq=stamp, upstream_prev=prev)


def _watermark(r: Any) -> int:
    raw = r.hget(KEYS.meta, FIELD)
    return int(raw) if raw is not None else -1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    count=st.integers(1, 12),
    lost=st.sets(st.integers(2, 12), max_size=3),
    cuts=st.lists(st.integers(1, 11), max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_watermark_never_runs_ahead_of_what_is_applied(
    r: Any, store: Any, count: int, lost: set[int], cuts: list[int], order: Any
) -> None:
    r.flushdb()
    published = [n for n in range(1, count + 1) if n not in lost] or [1]
    events, prev = [], None
    for stamp, n in enumerate(published, start=1):
        events.append(_event(n, prev, stamp))  # what the subscriber hands on, in receipt order
        prev = n
    bounds = sorted({c for c in cuts if c < len(events)})
    batches = [events[a:b] for a, b in zip([0, *bounds], [*bounds, len(events)], strict=True)]
    order.shuffle(batches)  # concurrent workers finish in any order
    applied: set[int] = set()
    for batch in batches:
        store.apply_events(TENANT, batch)
        applied |= {e.upstream_seq for e in batch}
        mark = _watermark(r)
        assert all(n in applied for n in published if n <= mark), (mark, sorted(applied))
    assert _watermark(r) == published[-1]  # lost events do not hold it back
    assert not r.exists(KEYS.upstream_pending)


def test_watermark_never_goes_down(r: Any, store: Any) -> None:
    r.flushdb()
    store.apply_events(TENANT, [_event(5, None, 1)])
    store.apply_events(TENANT, [_event(3, None, 2)])  # a re-published older event
    assert _watermark(r) == 5


def test_task_form_carries_the_upstream_seq_and_its_predecessor() -> None:
    event = _event(7, 6, 3)
    again = Event.from_task(TENANT, event.to_task())
    assert (again.upstream_seq, again.upstream_prev) == (7, 6)
