"""Creating a lead that costs credits: reserve, write the lead to the database, commit.

Three steps in two stores cannot be one transaction, so every crash between them must leave
something the next step or the reconciler can finish:

1. ``holds.reserve`` with the new lead id as the hold's result ref. Nothing else exists yet;
   a crash here leaves a hold that the reconciler voids after its deadline (the database
   has no such lead: it writes a tombstone for the id first, so the lead cannot appear later).
2. ``LeadStore.insert``. A crash or a database outage here (the row may or may not have been
   written) leaves the hold open for the reconciler, which commits it if the row exists.
3. ``holds.commit`` with the lead id, then ``mark_charged``. A crash before the commit leaves
   the lead and its open hold: the reconciler commits it. Nothing ever voids a hold whose lead
   exists, so a lead is never left without its charge once the reconciler has run.

A retry with the same Idempotency-Key (same request) finds the first attempt's hold and
finishes that attempt's work with its lead id, so the client gets one lead and one charge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crmcache import holds
from crmcache.credits import Number, as_number, utc_now_iso
from crmcache.errors import (
    CrmCacheError,
    HoldClosed,
    HoldNotFound,
    IdempotencyConflict,
    StoreUnavailable,
)
from crmcache.lead_store import VOID, Lead, LeadStore
from crmcache.store import Store
from crmcache.wrapper import WrapperClient

logger = logging.getLogger(__name__)

LEAD_OPERATION = "crm.leads.create"
"""The operation a lead costs, and the permission it needs."""


def new_lead_id() -> str:
    return holds.new_hold_id().replace(holds.HOLD_ID_PREFIX, "lead_", 1)


@dataclass(frozen=True)
class LeadCharged:
    """The answer to a lead request; a replay of its key answers the same."""

    lead_id: str
    amount: Number
    remaining: Number
    replayed: bool
    settle_now: bool = False
    hold: holds.Hold | None = None


@dataclass(frozen=True)
class LeadRequest:
    tenant: str
    user_id: str
    lead_data: dict[str, Any]
    cost: Number
    idempotency_key: str
    fingerprint: str


def committed_replay(store: Store, request: LeadRequest) -> LeadCharged | None:
    """The first answer of this key when its lead was charged; None otherwise (then the
    checks of a new request run, and reserve replays a hold still open). IdempotencyConflict
    when the key belongs to another request."""
    record = holds.request_record(store, request.tenant, request.idempotency_key)
    if record is None:
        return None
    if record.get("fingerprint") != request.fingerprint or "holdId" not in record:
        raise IdempotencyConflict("this Idempotency-Key was already used with a different request")
    if record.get("state") != "committed":
        return None
    return LeadCharged(
        lead_id=record["resultRef"],
        amount=as_number(record["amount"]),
        remaining=as_number(record["available"]),
        replayed=True,
    )


def create_lead(
    store: Store,
    wrapper: WrapperClient,
    lead_store: LeadStore,
    request: LeadRequest,
    *,
    timeout_s: float,
    ttl_s: int,
    read_through: Callable[[], Any] | None = None,
) -> LeadCharged:
    """Reserve the cost, write the lead, commit the charge (see the module docstring).

    Raises what ``holds.reserve`` raises, LeadStoreUnavailable (the hold stays open for the
    reconciler: the lead may exist), and HoldClosed when the reconciler gave the hold back
    before the lead was written (nothing is charged and no lead exists: retry)."""
    hold = holds.reserve(
        store,
        wrapper,
        request.tenant,
        user_id=request.user_id,
        operation=LEAD_OPERATION,
        amount=request.cost,
        idempotency_key=request.idempotency_key,
        timeout_s=timeout_s,
        ttl_s=ttl_s,
        request_fingerprint=request.fingerprint,
        result_ref=new_lead_id(),
        read_through=read_through,
    )
    if hold.replayed and not hold.open:  # committed by the first attempt
        return LeadCharged(hold.result_ref, hold.amount, hold.available, True, hold=hold)
    return _write_and_commit(store, lead_store, request, hold, ttl_s)


def _write_and_commit(
    store: Store, lead_store: LeadStore, request: LeadRequest, hold: holds.Hold, ttl_s: int
) -> LeadCharged:
    """Write the lead of an open hold, then commit the hold (the charge)."""
    lead = Lead(
        tenant=request.tenant,
        lead_id=hold.result_ref,
        user_id=request.user_id,
        hold_id=hold.hold_id,
        credits=str(hold.amount),
        lead_data=request.lead_data,
        created_at=utc_now_iso(),
    )
    if not lead_store.insert(lead) and lead_store.status(request.tenant, lead.lead_id) == VOID:
        raise HoldClosed(hold.hold_id, "voided")
    try:
        done = holds.commit(store, request.tenant, hold.hold_id, lead.lead_id, ttl_s=ttl_s)
    except HoldNotFound:
        # Redis lost the hold it answered a moment ago (restarted empty): an outage, never
        # "not found"; the reconciler charges the lead directly.
        raise StoreUnavailable("the cache lost the lead's reservation") from None
    try:
        lead_store.mark_charged(request.tenant, lead.lead_id)
    except CrmCacheError as exc:  # charged all the same; the reconciler sets the flag later
        logger.warning("tenant=%s %s charged, flag not set: %s", request.tenant, lead.lead_id, exc)
    return LeadCharged(
        lead_id=lead.lead_id,
        amount=hold.amount,
        remaining=hold.available,
        replayed=hold.replayed or done.replayed,
        settle_now=done.settle_now,
        hold=hold,
    )
