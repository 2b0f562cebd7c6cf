"""Credit holds: reserve an amount around real work, then commit it (charged) or void it.

A two-phase ledger in the manner of TigerBeetle's pending transfers: ``reserve`` moves the
amount from the user's available balance into a hold (atomically, never below zero, once per
idempotency key), ``commit`` turns the hold into a charge that settles with the Wrapper
through the credit outbox exactly like a deduction, ``void`` gives the amount back. A hold
neither committed nor voided by its deadline voids itself: the deadline lives in Redis, by
Redis's clock, and every reserve, commit, void and balance read of the user first voids that
user's overdue holds; the reconciler (``crmcache.reconcile_credits``) sweeps users nobody
touches any more. Every transition is one step of ``lua/credit_holds.lua``.

A hold reserved with a ``result_ref`` (the id of a lead about to be written to the database)
is not voided by its deadline alone, because only the database knows whether that lead was
written: the reconciler asks it (``crmcache.reconcile``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crmcache.credits import (
    SETTLE_SCHEDULED_TTL_MS,
    Number,
    as_number,
    checked_request,
    request_fields,
    utc_now_iso,
    validate_key,
    with_balance,
)
from crmcache.errors import (
    HoldClosed,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
)
from crmcache.keyspace import OUTBOX_GROUP, TenantKeys
from crmcache.store import Store
from crmcache.store_base import text, text_pairs
from crmcache.wrapper import WrapperClient

HOLD_ID_PREFIX = "hold_"
_CONFLICT = "this idempotency key was already used with a different request"


def new_hold_id() -> str:
    return f"{HOLD_ID_PREFIX}{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Hold:
    """A reservation as its reserve answered it; a replay of the key answers the same."""

    hold_id: str
    user_id: str
    operation: str
    amount: Number
    available: Number
    """The user's available balance right after this hold took its amount."""
    deadline_ms: int
    idempotency_key: str
    result_ref: str
    """The result the reserving caller announced (a lead id), '' for none."""
    replayed: bool
    open: bool = True
    """False for a replay of a hold committed since."""
    available_before: Number | None = None
    """The available balance before this reservation (None for a replay)."""

    @classmethod
    def from_record(cls, record: dict[str, str], *, replayed: bool, open: bool) -> Hold:
        return cls(
            hold_id=record["holdId"],
            **request_fields(record),
            available=as_number(record["available"]),
            deadline_ms=int(record["deadlineMs"]),
            idempotency_key=record["idempotencyKey"],
            result_ref=record.get("resultRef", ""),
            replayed=replayed,
            open=open,
        )


@dataclass(frozen=True)
class Committed:
    """What a commit did; a repeated commit with the same result answers the same."""

    hold_id: str
    deduction_id: str
    result_ref: str
    replayed: bool
    settle_now: bool = False
    """True when the caller should enqueue settle_credits (no settle task is queued)."""


def _keys(tenant: str, user_id: str, hold_id: str, idempotency_key: str) -> list[str]:
    k = TenantKeys.of(tenant)
    return [
        k.balance(user_id),
        k.holds(user_id),
        k.hold_deadlines(user_id),
        k.hold_users,
        k.hold(hold_id),
        k.idempotency(idempotency_key),
        k.credit_outbox,
        k.settle_scheduled,
        k.meta,
    ]


def _run(store: Store, tenant: str, keys: list[str], args: list[Any]) -> list[Any]:
    reply: list[Any] = store.run_credit_script("credit_holds", tenant, keys, args)
    return [text(part) for part in reply]


def reserve(
    store: Store,
    wrapper: WrapperClient,
    tenant: str,
    *,
    amount: Number | str,
    user_id: str,
    operation: str,
    idempotency_key: str,
    timeout_s: float,
    ttl_s: int,
    request_fingerprint: str | None = None,
    result_ref: str = "",
    read_through: Callable[[], Any] | None = None,
) -> Hold:
    """Hold `amount` of the user's available credits until commit, void or `timeout_s`.

    Raises InsufficientCredits, IdempotencyConflict, BalanceUnknown (the Wrapper knows no such
    user) or StoreUnavailable (fail closed). `read_through` as in ``credits.deduct``."""
    amount_text, key, request_fingerprint = checked_request(
        user_id, operation, amount, idempotency_key, request_fingerprint, "reserve"
    )
    hold_id = new_hold_id()
    keys = _keys(tenant, user_id, hold_id, key)
    args = [
        "reserve",
        hold_id,
        user_id,
        ttl_s * 1000,
        TenantKeys.of(tenant).changes_channel,
        request_fingerprint,
        amount_text,
        max(int(timeout_s * 1000), 1),
        result_ref,
        operation,
        key,
        utc_now_iso(),
    ]

    def attempt() -> Hold | None:
        return _held(_run(store, tenant, keys, args), args)

    return with_balance(store, wrapper, tenant, user_id, read_through, attempt)


def _held(reply: list[Any], args: list[Any]) -> Hold | None:
    """What reserve's script answered (``args`` as ``reserve`` sent them); None when the
    balance is not cached (the caller reads it through and tries again)."""
    _, hold_id, user_id, _, _, _, amount_text, _, result_ref, operation, key, _ = args
    outcome = reply[0]
    if outcome == "held":
        available, deadline, before = reply[1], reply[2], reply[3]
        return Hold(
            hold_id=hold_id,
            user_id=user_id,
            operation=operation,
            amount=as_number(amount_text),
            available=as_number(available),
            deadline_ms=int(deadline),
            idempotency_key=key,
            result_ref=result_ref,
            replayed=False,
            available_before=as_number(before),
        )
    if outcome == "replay":
        return Hold.from_record(text_pairs(reply[1]), replayed=True, open=reply[2] == 1)
    if outcome == "conflict":
        raise IdempotencyConflict(_CONFLICT)
    if outcome == "insufficient":
        raise InsufficientCredits(reply[1], amount_text)
    return None


def request_record(store: Store, tenant: str, idempotency_key: str) -> dict[str, str] | None:
    """What the key's request left (a reservation's or a deduction's record), or None."""
    record = store.record(TenantKeys.of(tenant).idempotency(validate_key(idempotency_key)))
    return record or None


def hold_record(store: Store, tenant: str, hold_id: str) -> dict[str, str]:
    """The hold's record as last written (``state`` may still say held for one its deadline
    voided since: ``hold_status`` tells); HoldNotFound when there is none."""
    record = store.record(TenantKeys.of(tenant).hold(hold_id))
    if not record:
        raise HoldNotFound(f"no hold {hold_id!r}")
    return record


def hold_status(store: Store, tenant: str, hold_id: str, *, ttl_s: int) -> dict[str, str]:
    """The hold's record with its current ``state``: held (open), committed, voided, expired."""
    record = hold_record(store, tenant, hold_id)
    keys = _keys(tenant, record["userId"], hold_id, record["idempotencyKey"])
    args = _user_args("status", tenant, record["userId"], ttl_s)
    args[1] = hold_id
    reply = store.run_credit_script("credit_holds", tenant, keys, args)
    if not reply[1]:
        raise HoldNotFound(f"no hold {hold_id!r}")
    return text_pairs(reply[1])


def commit(
    store: Store,
    tenant: str,
    hold_id: str,
    result_ref: str = "",
    *,
    ttl_s: int,
    record: dict[str, str] | None = None,
) -> Committed:
    """Charge the held amount (settled with the Wrapper through the outbox). Committing again
    with the same `result_ref` replays; HoldClosed when it was voided or expired,
    IdempotencyConflict when it was committed with another result, HoldNotFound."""
    record = record or hold_record(store, tenant, hold_id)
    keys = _keys(tenant, record["userId"], hold_id, record["idempotencyKey"])
    deduction_id = f"ded_{uuid.uuid4().hex}"
    args = [
        "commit",
        hold_id,
        record["userId"],
        ttl_s * 1000,
        TenantKeys.of(tenant).changes_channel,
        result_ref,
        deduction_id,
        OUTBOX_GROUP,
        SETTLE_SCHEDULED_TTL_MS,
        utc_now_iso(),
    ]
    reply = _run(store, tenant, keys, args)
    outcome = reply[0]
    if outcome == "committed":
        return Committed(hold_id, deduction_id, result_ref, False, settle_now=reply[2] == 1)
    if outcome == "replay":
        stored = text_pairs(reply[1])
        return Committed(hold_id, stored["deductionId"], stored.get("resultRef", ""), True)
    if outcome == "conflict":
        raise IdempotencyConflict(f"hold {hold_id} belongs to another result")
    if outcome == "unknown":
        raise HoldNotFound(f"no hold {hold_id!r}")
    raise HoldClosed(hold_id, outcome)


def void(
    store: Store, tenant: str, hold_id: str, *, ttl_s: int, record: dict[str, str] | None = None
) -> Number | None:
    """Give the held amount back; the available balance after (None when not cached).
    Voiding a closed hold again is a no-op (None); HoldClosed for a committed one."""
    record = record or hold_record(store, tenant, hold_id)
    keys = _keys(tenant, record["userId"], hold_id, record["idempotencyKey"])
    args = ["void", hold_id, record["userId"], ttl_s * 1000, TenantKeys.of(tenant).changes_channel]
    reply = _run(store, tenant, keys, args)
    if reply[0] == "voided":
        return as_number(reply[1]) if reply[1] else None
    if reply[0] == "committed":
        raise HoldClosed(hold_id, "committed")
    if reply[0] == "unknown":
        raise HoldNotFound(f"no hold {hold_id!r}")
    return None


@dataclass(frozen=True)
class Waiting:
    """An overdue hold waiting on a result: only its owner's database can tell its fate."""

    hold_id: str
    result_ref: str
    user_id: str
    idempotency_key: str

    @property
    def record(self) -> dict[str, str]:
        """Enough of a record for ``commit`` and ``void`` (the real one may have expired)."""
        return {"userId": self.user_id, "idempotencyKey": self.idempotency_key}


def sweep(store: Store, tenant: str, user_id: str) -> list[Waiting]:
    """Void the user's overdue holds; return the overdue ones waiting on a result."""
    reply = _run(store, tenant, _user_keys(tenant, user_id), _user_args("sweep", tenant, user_id))
    rest = reply[1:]
    return [
        Waiting(hold_id, ref, user_id, key)
        for hold_id, ref, key in zip(rest[::3], rest[1::3], rest[2::3], strict=True)
    ]


def balance(store: Store, tenant: str, user_id: str) -> tuple[Number | None, Number]:
    """(available or None when not cached, held), after voiding the user's overdue holds."""
    args = _user_args("balance", tenant, user_id)
    reply = store.run_credit_script("credit_holds", tenant, _user_keys(tenant, user_id), args)
    held = sum((Decimal(json.loads(raw)["amount"]) for raw in reply[2]), Decimal(0))
    available = as_number(reply[1]) if reply[1] else None
    return available, as_number(str(held))


def due_users(store: Store, tenant: str, limit: int = 1000) -> list[str]:
    """Users with a hold past its deadline (by Redis's clock)."""
    return store.due_members(TenantKeys.of(tenant).hold_users, limit)


def _user_keys(tenant: str, user_id: str) -> list[str]:
    # Sweep and balance touch only the user's keys; the record slots name no real hold.
    return _keys(tenant, user_id, "-", "-")


def _user_args(action: str, tenant: str, user_id: str, ttl_s: int = 0) -> list[Any]:
    # The record TTL (ARGV[4]) matters only to actions that close a record (status may).
    return [action, "", user_id, ttl_s * 1000, TenantKeys.of(tenant).changes_channel]
