"""Credits: read-through balances and deductions charged exactly once (README.md, "Credits:
reservations and leads").

A deduction is one Lua script (``lua/deduct_credits.lua``): idempotency check, balance check,
decrement, the outbox entry and the idempotency record, all or nothing. Work that may fail
after the money is taken (a lead written to the database) reserves first instead
(``crmcache.holds``). The outbox is
settled with the Wrapper by ``settlement`` (the ``crmcache.settle_credits`` task).

Two idempotency keys are in play: the client's (``Idempotency-Key``), remembered for
``CRM_IDEMPOTENCY_TTL`` seconds, and the deduction id sent to the Wrapper. They differ on
purpose: a client reusing its key after the record expired makes a new, real charge, and the
Wrapper must see it as new rather than dedupe it against the old one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from crmcache.errors import (
    BalanceUnknown,
    IdempotencyConflict,
    InsufficientCredits,
    StoreUnavailable,
    WrapperError,
    WrapperNotFound,
)
from crmcache.keyspace import OUTBOX_GROUP, TenantKeys
from crmcache.store import Store
from crmcache.store_base import text as redis_text
from crmcache.store_base import text_pairs
from crmcache.tokens import version_token
from crmcache.wrapper import WrapperClient

T = TypeVar("T")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
"""Printable ASCII without spaces, at most 255 characters (a UUID fits)."""

SETTLE_SCHEDULED_TTL_MS = 30_000
"""How long one queued settle task covers later deductions (see ``deduct_credits.lua``)."""

Number = int | float


def validate_key(key: object) -> str:
    """The idempotency key unchanged, or ValueError."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ValueError("an idempotency key is 1-255 printable ASCII characters, no spaces")
    return key


def format_amount(value: Number | str | Decimal) -> str:
    """Plain decimal text for Redis (no exponent, no trailing zeros); ValueError if not >= 0."""
    if isinstance(value, bool):
        raise ValueError("an amount is a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("an amount is finite")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {str(value)[:40]!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError("an amount is a finite number >= 0")
    text = format(number.normalize(), "f")
    return text if text != "-0" else "0"


def as_number(text: str | bytes) -> Number:
    """Decimal text from Redis as an int when integral, else a float."""
    number = Decimal(redis_text(text))
    return int(number) if number == number.to_integral_value() else float(number)


def fingerprint(payload: Any) -> str:
    """A stable digest of what a client asked for (canonical JSON)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def request_fields(record: dict[str, str]) -> dict[str, Any]:
    """The user, operation and amount of a stored deduction or hold record, as keywords."""
    return {
        "user_id": record["userId"],
        "operation": record["operationCode"],
        "amount": as_number(record["amount"]),
    }


def checked_request(
    user_id: str,
    operation: str,
    amount: Number | str,
    idempotency_key: str,
    request_fingerprint: str | None,
    *scope: str,
) -> tuple[str, str, str]:
    """A deduction's or reservation's amount as Redis text, its checked idempotency key and its
    fingerprint (by default of ``scope`` + (user, operation, amount)); ValueError if invalid."""
    amount_text = format_amount(amount)
    key = validate_key(idempotency_key)
    if request_fingerprint is None:
        request_fingerprint = fingerprint([*scope, user_id, operation, amount_text])
    return amount_text, key, request_fingerprint


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Deduction:
    """What one charge did; identical for the first call and every replay of its key."""

    deduction_id: str
    user_id: str
    operation: str
    amount: Number
    remaining: Number
    occurred_at: str
    replayed: bool
    settle_now: bool = False
    """True when the caller should enqueue settle_credits (no settle task is queued)."""
    token: str = ""
    """The consistency token of the tenant's data as the charge left it (crmcache/tokens.py)."""

    @classmethod
    def from_record(cls, record: dict[str, str], *, replayed: bool) -> Deduction:
        return cls(
            deduction_id=record["deductionId"],
            **request_fields(record),
            remaining=as_number(record["remaining"]),
            occurred_at=record["occurredAt"],
            replayed=replayed,
            token=version_token(record.get("epoch"), int(record.get("version") or 0)),
        )


def load_balance(store: Store, wrapper: WrapperClient, tenant: str, user_id: str) -> Number:
    """Read the balance through from the Wrapper into the cache (SET NX: a balance already
    cached, maybe already charged, is never overwritten) and return the cached value."""
    try:
        answer = wrapper.user_credits(tenant, user_id)
    except WrapperNotFound:
        raise BalanceUnknown(f"the Wrapper knows no user {user_id!r}") from None
    available = answer.get("available") if isinstance(answer, dict) else None
    try:
        text = format_amount(available)  # type: ignore[arg-type]
    except ValueError:
        raise WrapperError(f"credits of {user_id!r}: 'available' is not a number >= 0") from None
    return as_number(store.seed_balance(tenant, user_id, text))


_CONFLICT = "this Idempotency-Key was already used with a different request"


class _Charge:
    """One deduction's deduct_credits.lua call, and what its reply means."""

    def __init__(
        self,
        tenant: str,
        user_id: str,
        operation: str,
        amount_text: str,
        key: str,
        request_fingerprint: str,
        ttl_s: int,
    ) -> None:
        tk = TenantKeys.of(tenant)
        self.user_id, self.operation, self.amount_text = user_id, operation, amount_text
        self.deduction_id, self.occurred_at = f"ded_{uuid.uuid4().hex}", utc_now_iso()
        self.keys = [
            tk.balance(user_id),
            tk.idempotency(key),
            tk.credit_outbox,
            tk.settle_scheduled,
            tk.meta,
        ]
        self.args: list[Any] = [
            request_fingerprint,
            amount_text,
            self.deduction_id,
            ttl_s * 1000,
            user_id,
            operation,
            self.occurred_at,
            key,
            SETTLE_SCHEDULED_TTL_MS,
            OUTBOX_GROUP,
            tk.changes_channel,
        ]

    def answer(self, reply: list[Any]) -> Deduction | None:
        """The deduction the script made or replayed; None when the balance is not cached."""
        outcome = redis_text(reply[0])
        if outcome == "charged":
            remaining, _entry, enqueue, version, epoch = reply[1:6]
            return Deduction(
                deduction_id=self.deduction_id,
                user_id=self.user_id,
                operation=self.operation,
                amount=as_number(self.amount_text),
                remaining=as_number(remaining),
                occurred_at=self.occurred_at,
                replayed=False,
                settle_now=bool(enqueue),
                token=version_token(epoch, int(version)),
            )
        if outcome == "replay":
            return Deduction.from_record(text_pairs(reply[1]), replayed=True)
        if outcome == "conflict":
            raise IdempotencyConflict(_CONFLICT)
        if outcome == "insufficient":
            raise InsufficientCredits(redis_text(reply[1]), self.amount_text)
        return None


def deduct(
    store: Store,
    wrapper: WrapperClient,
    tenant: str,
    *,
    user_id: str,
    operation: str,
    amount: Number | str,
    idempotency_key: str,
    request_fingerprint: str | None = None,
    ttl_s: int = 86_400,
    read_through: Callable[[], Any] | None = None,
) -> Deduction:
    """Charge `amount` once per `idempotency_key` (see deduct_credits.lua).

    The fingerprint defaults to (user, operation, amount). `read_through` fills a balance that
    is not cached (the read side's ``get_user_credits_detail``, which shares one upstream fetch
    among concurrent callers; its ``found`` False means the Wrapper knows no such user); by
    default ``load_balance``. Raises InsufficientCredits, IdempotencyConflict, BalanceUnknown
    (only when the Wrapper answered 404 for the user), StoreUnavailable (fail closed: Redis
    down, or a balance read through that the cache did not keep) or WrapperUnavailable (balance
    not cached and the Wrapper down: fail closed too).
    """
    amount_text, key, request_fingerprint = checked_request(
        user_id, operation, amount, idempotency_key, request_fingerprint
    )
    charge = _Charge(tenant, user_id, operation, amount_text, key, request_fingerprint, ttl_s)

    def attempt() -> Deduction | None:
        return charge.answer(
            store.run_credit_script("deduct_credits", tenant, charge.keys, charge.args)
        )

    return with_balance(store, wrapper, tenant, user_id, read_through, attempt)


def with_balance(
    store: Store,
    wrapper: WrapperClient,
    tenant: str,
    user_id: str,
    read_through: Callable[[], Any] | None,
    attempt: Callable[[], T | None],
) -> T:
    """Run a charge's script (``attempt``: None when the user's balance is not cached), reading
    the balance through and trying again, up to 3 times. ``read_through`` (the read side's
    shared fetch; ``found`` False: the Wrapper knows no such user) or ``load_balance``."""
    for _attempt in range(3):
        answer = attempt()
        if answer is not None:
            return answer
        if read_through is None:
            load_balance(store, wrapper, tenant, user_id)
        elif getattr(read_through(), "found", True) is False:
            raise BalanceUnknown(f"the Wrapper knows no user {user_id!r}")
    # The Wrapper knows the user, yet the cache still holds no balance: Redis lost its data
    # (restarted empty) or the read-through could not write it. The user exists: never say
    # "not found" for that; fail closed as for any other cache outage.
    raise StoreUnavailable(f"the balance of {user_id!r} could not be kept in the cache")
