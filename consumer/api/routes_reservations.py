"""Credit reservations over HTTP: reserve, commit, void, look up; and a user's balance.

The same two-phase ledger as ``SmartCRMConsumer.reserve_credits`` (``crmcache.holds``): a
reservation holds credits until it is committed (charged, settled with the Wrapper) or voided,
and voids itself at its deadline. Hold ids are per tenant: another tenant's are not found.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response

from consumer.api.auth import tenant_of
from consumer.api.deps import iso_time, service_of
from consumer.api.errors import ApiError
from consumer.api.models import (
    COMMON_ERRORS,
    IDENT_PATTERN,
    CommitRequest,
    CreditBalance,
    ErrorResponse,
    Reservation,
    ReservationClosed,
    ReserveRequest,
)
from crmcache import credits, holds

router = APIRouter(tags=["credits"])

_ERRORS = COMMON_ERRORS
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such reservation"}
}
_CLOSED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "the reservation is closed otherwise"}
}
HoldIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _reservation(record: dict[str, str]) -> Reservation:
    return Reservation(
        holdId=record["holdId"],
        userId=record["userId"],
        operation=record["operationCode"],
        amount=credits.as_number(record["amount"]),
        state=record["state"],
        availableCredits=credits.as_number(record["available"]),
        expiresAt=iso_time(int(record["deadlineMs"]) / 1000) or "",
        resultRef=record.get("resultRef", ""),
    )


@router.post(
    "/api/credits/reservations",
    status_code=201,
    response_model=Reservation,
    responses={
        **_ERRORS,
        402: {"model": ErrorResponse, "description": "insufficient credits"},
        404: {"model": ErrorResponse, "description": "the Wrapper knows no such user"},
        409: {
            "model": ErrorResponse,
            "description": "operation not configured, or the key was used for another request",
        },
    },
    summary="Hold credits for work about to be done (commit or void it afterwards)",
)
def reserve(
    request: Request,
    body: ReserveRequest,
    response: Response,
    idempotency_key: Annotated[
        str, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[!-~]+$")
    ],
) -> Reservation:
    tenant, service = tenant_of(request), service_of(request)
    reader = service.readers.get(tenant)
    amount = body.amount
    if amount is None:
        amount = reader.get_credit_cost(body.operation)
        if amount is None:
            raise ApiError(
                409,
                "operation_not_configured",
                "operation not configured",
                operation=body.operation,
            )
    hold = holds.reserve(
        service.store,
        service.wrapper,
        tenant,
        user_id=body.userId,
        operation=body.operation,
        amount=amount,
        idempotency_key=idempotency_key,
        timeout_s=service.settings.hold_timeout,
        ttl_s=service.settings.idempotency_ttl,
        request_fingerprint=credits.fingerprint(
            ["POST /api/credits/reservations", body.userId, body.operation, body.amount]
        ),
        read_through=lambda: reader.get_user_credits_detail(body.userId),
    )
    if hold.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    service.after_charge(tenant, hold, False)
    return Reservation(
        holdId=hold.hold_id,
        userId=hold.user_id,
        operation=hold.operation,
        amount=hold.amount,
        state="held" if hold.open else "committed",
        availableCredits=hold.available,
        expiresAt=iso_time(hold.deadline_ms / 1000) or "",
        resultRef=hold.result_ref,
    )


@router.get(
    "/api/credits/reservations/{holdId}",
    response_model=Reservation,
    responses={**_ERRORS, **_NOT_FOUND},
    summary="A reservation and its state",
)
def get_reservation(request: Request, holdId: HoldIdPath) -> Reservation:
    tenant, service = tenant_of(request), service_of(request)
    ttl_s = service.settings.idempotency_ttl
    return _reservation(holds.hold_status(service.store, tenant, holdId, ttl_s=ttl_s))


@router.post(
    "/api/credits/reservations/{holdId}/commit",
    response_model=ReservationClosed,
    responses={**_ERRORS, **_NOT_FOUND, **_CLOSED},
    summary="Charge the held credits (settled with the Wrapper exactly once)",
)
def commit(
    request: Request, holdId: HoldIdPath, body: CommitRequest | None = None
) -> ReservationClosed:
    tenant, service = tenant_of(request), service_of(request)
    ref = body.resultRef if body is not None else ""
    done = holds.commit(service.store, tenant, holdId, ref, ttl_s=service.settings.idempotency_ttl)
    if done.settle_now:
        service.settle_soon(tenant)
    return ReservationClosed(
        holdId=holdId, state="committed", deductionId=done.deduction_id, resultRef=done.result_ref
    )


@router.post(
    "/api/credits/reservations/{holdId}/void",
    response_model=ReservationClosed,
    responses={**_ERRORS, **_NOT_FOUND, **_CLOSED},
    summary="Give the held credits back",
)
def void(request: Request, holdId: HoldIdPath) -> ReservationClosed:
    tenant, service = tenant_of(request), service_of(request)
    available = holds.void(service.store, tenant, holdId, ttl_s=service.settings.idempotency_ttl)
    return ReservationClosed(holdId=holdId, state="voided", availableCredits=available)


@router.get(
    "/api/credits/balance",
    response_model=CreditBalance,
    responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown user"}},
    summary="The user's available and held credits",
)
def balance(
    request: Request,
    userId: Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)],
) -> CreditBalance:
    tenant, service = tenant_of(request), service_of(request)
    available, held = holds.balance(service.store, tenant, userId)
    if available is None:
        answer = service.readers.get(tenant).get_user_credits_detail(userId)
        if answer.value is None:
            raise ApiError(404, "user_not_found", "no such user", userId=userId)
        available, held = holds.balance(service.store, tenant, userId)
        available = answer.value if available is None else available
    return CreditBalance(userId=userId, availableCredits=available, heldCredits=held)
