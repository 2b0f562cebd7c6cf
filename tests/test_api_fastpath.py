"""The async endpoints' fast path answers from the reader's near-cache without I/O, and hands
everything else to the thread pool (it never guesses)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from consumer import SmartCRMConsumer
from consumer.http import fastpath

pytest_plugins = ("tests.api_fixtures",)


@pytest.fixture
def reader(settings: Any, preload: Any) -> Iterator[Any]:
    preload("acme")
    consumer = SmartCRMConsumer("acme", settings=settings)
    consumer.initialize()
    yield consumer
    consumer.shutdown()


def test_a_near_cache_hit_is_answered_on_the_loop(reader: Any) -> None:
    # Given a warm reader; when peeking at a cached cost and permission
    cost = fastpath.peek_credit_cost(reader, "crm.leads.create")
    check = fastpath.peek_permission(reader, "user-456", "crm.leads.create")
    # Then both are the reader's near-cache answers
    assert cost is not None and (cost.cost, cost.source) == (1, "near-cache")
    assert check is not None and check.authorized and check.source == "near-cache"


def test_what_the_near_cache_lacks_is_left_to_the_thread_pool(reader: Any) -> None:
    # An unknown user and an unknown operation would need Redis: no answer on the loop
    assert fastpath.peek_permission(reader, "nobody", "crm.leads.create") is None
    assert fastpath.peek_credit_cost(reader, "crm.unknown.op") is None


def test_an_untrusted_near_cache_is_never_served_on_the_loop(reader: Any) -> None:
    # Given a near-cache whose confirmation lapsed (as after CRM_NEAR_CACHE_STALENESS_MS)
    reader._critical.near.trusted_until = 0.0
    # Then the fast path declines, so the reader revalidates in the thread pool
    assert fastpath.peek_credit_cost(reader, "crm.leads.create") is None
    assert fastpath.peek_permission(reader, "user-456", "crm.leads.create") is None
