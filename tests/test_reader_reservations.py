"""SmartCRMConsumer.reserve_credits: the context manager and the explicit calls, settled by the
real worker with the sandbox Wrapper; failing closed without Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from crmcache.errors import HoldClosed, InsufficientCredits, StoreUnavailable
from crmcache.keyspace import TenantKeys
from tests.conftest import wait_until
from tests.reader_helpers import preload, private_redis, reader

KEYS = TenantKeys.of("acme")


def test_a_with_block_that_commits_charges_once_and_is_settled(
    store: Any, wrapper: Any, settings: Any, worker: Any, r: redis.Redis
) -> None:
    preload(store, settings)
    with reader(settings) as crm:
        # When the cost of a lead (1) is reserved around the work and committed inside
        with crm.reserve_credits("user-456", "crm.leads.create", "work-1") as hold:
            assert crm.reservations.balance("user-456").held == 1
            done = hold.commit("lead-42")
        # Then it is charged, nothing is held, and the Wrapper gets it once
        balance = crm.reservations.balance("user-456")
        assert (balance.available, balance.held) == (99, 0)
        assert crm.reservations.status(hold.hold_id)["resultRef"] == "lead-42"
    wait_until(lambda: done.deduction_id in wrapper.consumed, what="the settlement")
    assert wrapper.consume_calls[done.deduction_id] == 1


def test_an_exception_in_the_block_voids_the_hold(store: Any, settings: Any, wrapper: Any) -> None:
    preload(store, settings)
    with reader(settings) as crm:
        with pytest.raises(RuntimeError), crm.reserve_credits("user-456", "x", "w-2", amount=7):
            assert crm.reservations.balance("user-456").available == 93
            raise RuntimeError("the work failed")
        assert crm.reservations.balance("user-456").available == 100
        # And a block that finishes without committing voids too: nothing was bought
        with crm.reserve_credits("user-456", "x", "w-3", amount=7) as unused:
            pass
        assert crm.reservations.status(unused.hold_id)["state"] == "voided"
        assert crm.reservations.balance("user-456").held == 0


def test_explicit_reserve_commit_and_void_by_id(store: Any, settings: Any, wrapper: Any) -> None:
    preload(store, settings)
    with reader(settings) as crm, reader(settings) as other_process:
        kept = crm.reserve_credits("user-456", "crm.leads.create", "w-4")
        dropped = crm.reserve_credits("user-456", "crm.leads.create", "w-5")
        # Another process finishes the work by hold id
        other_process.reservations.commit(kept.hold_id, "lead-1")
        other_process.reservations.void(dropped.hold_id)
        with pytest.raises(HoldClosed):
            dropped.commit("too-late")
        assert crm.reservations.balance("user-456").available == 99
        with pytest.raises(InsufficientCredits):
            crm.reserve_credits("user-456", "x", "w-6", amount=1000)
        with pytest.raises(ValueError):
            crm.reserve_credits("user-456", "crm.nothing", "w-7")  # no cost configured


def test_reservations_fail_closed_while_redis_is_down(wrapper: Any, settings: Any) -> None:
    with private_redis(settings) as (server, own_settings, own_store):
        preload(own_store, own_settings)
        with reader(own_settings) as crm:
            crm.initialize()
            assert crm.get_user_credits("user-456") == 100
            server.stop()
            wait_until(
                lambda: crm.get_credit_cost_detail("crm.leads.create").stale, what="degraded"
            )
            with pytest.raises(StoreUnavailable):
                crm.reserve_credits("user-456", "crm.leads.create", "w-down")
