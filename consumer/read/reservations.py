"""Credits that move money, for ``SmartCRMConsumer``: reservations around real work, and
one-step deductions. Usage::

    with crm.reserve_credits("user-456", "crm.leads.create", idempotency_key=key) as hold:
        lead_id = write_the_lead()        # an exception here voids the hold
        hold.commit(lead_id)              # charged, settled with the Wrapper exactly once

or explicitly: ``hold = crm.reserve_credits(...)``, then ``hold.commit(ref)`` or
``hold.void()``; from another process, ``crm.reservations.commit(hold_id, ref)``. A hold
neither committed nor voided voids itself after CRM_HOLD_TIMEOUT seconds (a deadline kept by
Redis, see crmcache/holds.py). Balances: ``crm.reservations.balance(user)`` -> available and
held. Everything fails closed while Redis is down (``StoreUnavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from consumer.read.readiness import enqueue_settlement
from crmcache import credits_low, holds
from crmcache.credits import Number
from crmcache.errors import CrmCacheError, StoreUnavailable
from crmcache.store import Store

if TYPE_CHECKING:
    from crmcache.credits import Deduction
    from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreditBalance:
    available: Number | None
    """None: no balance cached (``get_user_credits`` reads it through)."""
    held: Number


class CreditHold:
    """One reservation; a context manager that voids it unless it was committed in the block."""

    def __init__(self, owner: Reservations, hold: holds.Hold) -> None:
        self.owner = owner
        self.hold = hold
        self.closed = not hold.open
        self.committed: holds.Committed | None = None

    @property
    def hold_id(self) -> str:
        return self.hold.hold_id

    @property
    def amount(self) -> Number:
        return self.hold.amount

    def commit(self, result_ref: str = "") -> holds.Committed:
        """Charge the held credits, recording what they paid for. Repeating it replays;
        ``HoldClosed`` when the hold expired or was voided."""
        self.committed = self.owner.commit(self.hold_id, result_ref)
        self.closed = True
        return self.committed

    def void(self) -> None:
        """Give the credits back (a no-op once closed)."""
        self.owner.void(self.hold_id)
        self.closed = True

    def __enter__(self) -> CreditHold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.closed:
            return
        try:
            self.void()
        except CrmCacheError as failure:  # its deadline voids it anyway
            logger.warning("hold %s not voided on exit (%s): its deadline will", self, failure)

    def __repr__(self) -> str:
        return f"CreditHold({self.hold_id}, {self.amount})"


class Reservations:
    """One tenant's credit operations in a reader process."""

    def __init__(
        self,
        tenant: str,
        settings: Settings,
        store: Store,
        wrapper: Callable[[], WrapperClient],
        read_through: Callable[[str], Any],
        cost: Callable[[str], Number | None],
    ) -> None:
        self.tenant = tenant
        self.settings = settings
        self.store = store
        self.wrapper = wrapper
        self.read_through = read_through
        self.cost = cost
        self.low_balance_crossings = 0
        """Charges of this process that took a balance below the low-balance threshold."""

    def reserve(
        self, user_id: str, operation: str, idempotency_key: str, amount: Number | None = None
    ) -> CreditHold:
        """Hold ``amount`` (by default the operation's cost; ValueError when it has none)."""
        if amount is None:
            amount = self.cost(operation)
            if amount is None:
                raise ValueError(f"operation {operation!r} is not configured: no cost to hold")
        hold = holds.reserve(
            self.store,
            self.wrapper(),
            self.tenant,
            user_id=user_id,
            operation=operation,
            amount=amount,
            idempotency_key=idempotency_key,
            timeout_s=self.settings.hold_timeout,
            ttl_s=self.settings.idempotency_ttl,
            read_through=lambda: self.read_through(user_id),
        )
        if not hold.replayed:
            self._low_balance(user_id, hold.available_before, hold.available)
        return CreditHold(self, hold)

    def commit(self, hold_id: str, result_ref: str = "") -> holds.Committed:
        ttl_s = self.settings.idempotency_ttl
        done = holds.commit(self.store, self.tenant, hold_id, result_ref, ttl_s=ttl_s)
        if done.settle_now:
            self._settle_soon()
        return done

    def void(self, hold_id: str) -> Number | None:
        return holds.void(self.store, self.tenant, hold_id, ttl_s=self.settings.idempotency_ttl)

    def status(self, hold_id: str) -> dict[str, str]:
        """The hold's record with its current state (held, committed, voided, expired)."""
        ttl_s = self.settings.idempotency_ttl
        return holds.hold_status(self.store, self.tenant, hold_id, ttl_s=ttl_s)

    def balance(self, user_id: str) -> CreditBalance:
        available, held = holds.balance(self.store, self.tenant, user_id)
        return CreditBalance(available, held)

    def deduct(
        self, user_id: str, amount: Number | str, idempotency_key: str, operation: str
    ) -> Deduction:
        """One-step charge (``crmcache.credits.deduct``), settled like a commit."""
        from crmcache import credits

        deduction = credits.deduct(
            self.store,
            self.wrapper(),
            self.tenant,
            user_id=user_id,
            operation=operation,
            amount=amount,
            idempotency_key=idempotency_key,
            ttl_s=self.settings.idempotency_ttl,
            read_through=lambda: self.read_through(user_id),
        )
        if not deduction.replayed:
            before = deduction.remaining + deduction.amount
            self._low_balance(user_id, before, deduction.remaining)
        if deduction.settle_now:
            self._settle_soon()
        return deduction

    def _low_balance(self, user_id: str, before: Number | None, after: Number) -> None:
        threshold = self.settings.low_balance_threshold(self.tenant)
        if credits_low.notice(self.store, self.tenant, user_id, before, after, threshold):
            self.low_balance_crossings += 1

    def _settle_soon(self) -> None:
        if enqueue_settlement(self.tenant):
            return
        try:  # let the next charge try to enqueue rather than wait for the flag to expire
            self.store.unschedule_settlement(self.tenant)
        except StoreUnavailable:
            pass
