"""deduct_credits on the reader: the credits module's atomic, idempotent charge, read-through
of a missing balance, settlement through the worker, and failing closed without Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from crmcache.errors import InsufficientCredits, StoreUnavailable
from crmcache.keyspace import TenantKeys
from tests.conftest import wait_until
from tests.reader_helpers import preload, private_redis, reader

KEYS = TenantKeys.of("acme")


def test_deduct_credits_charges_once_per_key_and_is_settled(
    store: Any, wrapper: Any, settings: Any, worker: Any, r: redis.Redis
) -> None:
    with reader(settings) as crm:
        # Given user-456 (100 credits at the Wrapper, nothing cached)
        # When 5 credits are deducted, then the same request is retried with the same key
        first = crm.deduct_credits("user-456", 5, "order-1", operation="crm.leads.create")
        again = crm.deduct_credits("user-456", 5, "order-1", operation="crm.leads.create")
        # Then the balance was read through once and charged once
        assert (first.remaining, again.remaining, again.replayed) == (95, 95, True)
        assert r.get(KEYS.balance("user-456")) == b"95"
        assert crm.get_user_credits("user-456") == 95
        # ... a charge above the balance is refused, nothing charged
        with pytest.raises(InsufficientCredits):
            crm.deduct_credits("user-456", 500, "order-2")
        assert r.get(KEYS.balance("user-456")) == b"95"
    # ... and the worker reports the deduction to the Wrapper exactly once
    wait_until(lambda: first.deduction_id in wrapper.consumed, what="the settlement")
    assert wrapper.consume_calls[first.deduction_id] == 1


def test_deductions_fail_closed_while_redis_is_down(wrapper: Any, settings: Any) -> None:
    with private_redis(settings) as (server, own_settings, own_store):
        preload(own_store, own_settings)
        with reader(own_settings) as crm:
            crm.initialize()
            assert crm.get_user_credits("user-456") == 100
            # When Redis stops
            server.stop()
            wait_until(
                lambda: crm.get_credit_cost_detail("crm.leads.create").stale, what="degraded"
            )
            # Then a deduction is refused (a stale balance is never charged), while the
            # balance can still be shown, flagged stale
            with pytest.raises(StoreUnavailable):
                crm.deduct_credits("user-456", 5, "order-x")
            shown = crm.get_user_credits_detail("user-456")
            assert (shown.value, shown.stale) == (100, True)
