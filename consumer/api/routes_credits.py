"""``GET /api/credits/validate`` and ``POST /api/leads``: the endpoints that move money."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from consumer.api import fastpath
from consumer.api.auth import tenant_of
from consumer.api.deps import Stopwatch, service_of
from consumer.api.errors import ApiError
from consumer.api.models import (
    IDENT_PATTERN,
    CreateLeadRequest,
    CreditValidation,
    ErrorResponse,
    LeadCreated,
)
from consumer.api.service import ApiService
from crmcache import credits
from crmcache.errors import InsufficientCredits

router = APIRouter(tags=["credits"])

LEAD_OPERATION = "crm.leads.create"
"""The operation a lead costs, and the permission it needs."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or unknown API key"},
    422: {"model": ErrorResponse, "description": "invalid request"},
    503: {"model": ErrorResponse, "description": "cache, Wrapper or tenant data unavailable"},
}


@router.get(
    "/api/credits/validate",
    response_model=CreditValidation,
    responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown operation/user"}},
    summary="Can the user afford the operation?",
)
async def validate_credits(
    request: Request,
    operation: Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)],
    userId: Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)],
) -> JSONResponse:
    watch = Stopwatch()
    tenant, service = tenant_of(request), service_of(request)
    reader = await fastpath.reader_for(service.readers, tenant)
    answer = await fastpath.credit_cost(reader, operation)
    cost = answer.cost
    if cost is None:
        raise ApiError(
            404,
            "operation_not_configured",
            "operation not configured",
            operation=operation,
            cached=answer.cached,
        )
    available, found, balance_cached, balance_stale = await fastpath.balance(
        service, reader, tenant, userId
    )
    if not found or available is None:
        raise ApiError(404, "user_not_found", "no such user", userId=userId)
    # Hot path: the dict goes out as is; response_model still documents it, and the
    # schemathesis test checks every answer against it.
    return JSONResponse(
        {
            "operation": operation,
            "creditCost": cost,
            "availableCredits": available,
            "canAfford": available >= cost,
            "cached": answer.cached and balance_cached,
            "stale": answer.stale or balance_stale,
            "responseTimeMs": watch.elapsed_ms(),
        }
    )


@router.post(
    "/api/leads",
    status_code=201,
    response_model=LeadCreated,
    responses={
        **_ERRORS,
        402: {"model": ErrorResponse, "description": "insufficient credits"},
        403: {"model": ErrorResponse, "description": f"the user lacks {LEAD_OPERATION}"},
        404: {"model": ErrorResponse, "description": "the Wrapper knows no such user"},
        409: {
            "model": ErrorResponse,
            "description": "lead creation not configured, or the Idempotency-Key was used "
            "for a different request",
        },
    },
    summary="Create a lead and charge its credits exactly once",
)
def create_lead(
    request: Request,
    body: CreateLeadRequest,
    response: Response,
    idempotency_key: Annotated[
        str,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[!-~]{1,255}$",
            description="the client's unique key for this lead: retries with it charge once",
        ),
    ],
) -> LeadCreated:
    tenant, service = tenant_of(request), service_of(request)
    request_fingerprint = credits.fingerprint(
        ["POST /api/leads", body.userId, body.leadData.model_dump(mode="json")]
    )
    prior = credits.replay(service.store, tenant, idempotency_key, request_fingerprint)
    if prior is None:
        prior = _charge_new_lead(service, tenant, body, idempotency_key, request_fingerprint)
    if prior.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    service.metrics.deductions.labels(tenant, "replayed" if prior.replayed else "charged").inc()
    assert prior.lead_id is not None
    return LeadCreated(
        leadId=prior.lead_id, creditsDeducted=prior.amount, remainingCredits=prior.remaining
    )


def _charge_new_lead(
    service: ApiService, tenant: str, body: CreateLeadRequest, key: str, request_fingerprint: str
) -> credits.Deduction:
    reader = service.readers.get(tenant)
    cost = reader.get_credit_cost(LEAD_OPERATION)
    if cost is None:  # 0 is a cost
        raise ApiError(
            409,
            "operation_not_configured",
            "lead creation is not configured",
            operation=LEAD_OPERATION,
        )
    if not reader.check_permission(body.userId, LEAD_OPERATION):
        raise ApiError(
            403,
            "forbidden",
            f"the user may not {LEAD_OPERATION}",
            userId=body.userId,
            permission=LEAD_OPERATION,
        )
    try:
        deduction = credits.deduct(
            service.store,
            service.wrapper,
            tenant,
            user_id=body.userId,
            operation=LEAD_OPERATION,
            amount=cost,
            idempotency_key=key,
            request_fingerprint=request_fingerprint,
            lead=_new_lead(body, cost),
            ttl_s=service.settings.idempotency_ttl,
            read_through=lambda: reader.get_user_credits_detail(body.userId),
        )
    except InsufficientCredits as exc:
        service.metrics.deductions.labels(tenant, "insufficient").inc()
        raise ApiError(
            402,
            "insufficient_credits",
            "insufficient credits",
            availableCredits=credits.as_number(exc.available),
            creditCost=credits.as_number(exc.required),
        ) from None
    if deduction.settle_now:
        service.settle_soon(tenant)
    return deduction


def _new_lead(body: CreateLeadRequest, cost: int | float) -> dict[str, Any]:
    """The lead as stored with its deduction (crm:{t}:leads)."""
    return {
        "leadId": f"lead_{uuid.uuid4().hex}",
        "userId": body.userId,
        "leadData": body.leadData.model_dump(mode="json", exclude_none=True),
        "createdAt": credits.utc_now_iso(),
        "creditsDeducted": cost,
    }
