"""Hypothesis drives reserve / commit / void / deadline / reconciler-sweep interleavings against
a real Redis and checks, after every step, that available + held + committed is what the user
started with, that nothing is ever negative, and that every answer matches a simple model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from crmcache import holds
from crmcache.errors import HoldClosed, IdempotencyConflict, InsufficientCredits
from crmcache.keyspace import TenantKeys
from crmcache.store import Store
from crmcache.wrapper import WrapperClient

ACME = TenantKeys.of("acme")
USER = "user-456"
INITIAL = 10
AMOUNTS = (0, 1, 2, 3.5, 5)
KEYS = 8
"""Few keys, so that keys are reused: replays, and keys whose hold closed reserving anew."""


@dataclass
class ModelHold:
    hold_id: str
    amount: float
    ref: str
    state: str = "held"  # held, committed, voided, expired
    committed_ref: str = ""


def key_facts(index: int) -> tuple[str, float, str]:
    """Key i always asks for the same amount, and even keys wait on a result (a lead)."""
    return f"k{index}", AMOUNTS[index % len(AMOUNTS)], f"lead-{index}" if index % 2 == 0 else ""


@pytest.fixture
def wrapper_client(settings: Any, wrapper: Any) -> Iterator[WrapperClient]:
    client = WrapperClient(settings)
    yield client
    client.close()


class Ledger(RuleBasedStateMachine):
    """One user's holds; the test sets the Redis client, store and Wrapper client."""

    r: redis.Redis
    store: Store
    client: WrapperClient
    placed = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.r.flushdb()
        self.r.set(ACME.balance(USER), str(INITIAL))
        self.by_key: dict[str, ModelHold] = {}
        self.committed = 0.0

    @rule(target=placed, index=st.integers(0, KEYS - 1))
    def reserve(self, index: int) -> ModelHold:
        key, amount, ref = key_facts(index)
        known = self.by_key.get(key)
        replays = known is not None and known.state in ("held", "committed")
        try:
            hold = holds.reserve(
                self.store,
                self.client,
                "acme",
                user_id=USER,
                operation="op",
                amount=amount,
                idempotency_key=key,
                timeout_s=60,
                ttl_s=3600,
                result_ref=ref,
            )
        except InsufficientCredits:
            assert not replays and self.available() < amount
            return known or ModelHold("", amount, ref, state="never")
        if replays:
            assert known is not None
            assert hold.replayed and hold.hold_id == known.hold_id
            assert hold.open == (known.state == "held")
            return known
        assert not hold.replayed
        self.by_key[key] = ModelHold(hold.hold_id, amount, ref)
        return self.by_key[key]

    @rule(hold=placed, other_ref=st.booleans())
    def commit(self, hold: ModelHold, other_ref: bool) -> None:
        if hold.state == "never":
            return
        ref = "someone-else" if other_ref else (hold.ref or "work-done")
        try:
            done = holds.commit(self.store, "acme", hold.hold_id, ref, ttl_s=3600)
        except IdempotencyConflict:
            assert (hold.state == "held" and hold.ref and other_ref) or (
                hold.state == "committed" and ref != hold.committed_ref
            )
            return
        except HoldClosed as closed:
            assert closed.state == hold.state and hold.state in ("voided", "expired")
            return
        if hold.state == "committed":
            assert done.replayed
            return
        assert hold.state == "held" and not (hold.ref and other_ref)
        hold.state, hold.committed_ref = "committed", ref
        self.committed += hold.amount

    @rule(hold=placed)
    def void(self, hold: ModelHold) -> None:
        if hold.state == "never":
            return
        try:
            holds.void(self.store, "acme", hold.hold_id, ttl_s=3600)
        except HoldClosed as closed:
            assert hold.state == closed.state == "committed"
            return
        if hold.state == "held":
            hold.state = "voided"

    @rule(hold=placed)
    def deadline_passes(self, hold: ModelHold) -> None:
        """Redis's clock passes the hold's deadline (its score moves into the past)."""
        if hold.state != "held":
            return
        self.r.zadd(ACME.hold_deadlines(USER), {hold.hold_id: 1})
        self.r.zadd(ACME.hold_users, {USER: 1})
        if not hold.ref:  # the next action of the user voids it; one with a ref waits
            hold.state = "expired"

    @rule()
    def reconciler_sweep(self) -> None:
        waiting = holds.sweep(self.store, "acme", USER)
        for hold in waiting:
            assert any(
                h.hold_id == hold.hold_id and h.ref == hold.result_ref for h in self.by_key.values()
            )

    def available(self) -> float:
        return INITIAL - self.committed - self.held()

    def held(self) -> float:
        return sum(h.amount for h in self.by_key.values() if h.state == "held")

    @invariant()
    def conserved(self) -> None:
        available, held = holds.balance(self.store, "acme", USER)
        assert available is not None and available >= 0
        assert held == self.held()
        assert available + held + self.committed == INITIAL


def test_holds_conserve_credits_under_any_interleaving(
    r: redis.Redis, store: Store, wrapper_client: WrapperClient
) -> None:
    Ledger.r, Ledger.store, Ledger.client = r, store, wrapper_client
    run_state_machine_as_test(
        Ledger,
        settings=hypothesis_settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
