"""``GET /api/credits/validate``, ``POST /api/leads`` and ``GET /api/leads/{leadId}``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from consumer.api import fastpath
from consumer.api.auth import tenant_of
from consumer.api.consistency import CONSISTENCY_ERRORS, requested, tokened
from consumer.api.deps import Stopwatch, service_of
from consumer.api.errors import ApiError
from consumer.api.models import (
    COMMON_ERRORS,
    IDENT_PATTERN,
    CreateLeadRequest,
    CreditValidation,
    ErrorResponse,
    Lead,
    LeadCreated,
)
from consumer.api.service import ApiService
from consumer.read.consistency import Consistency, MinimizeLatency
from crmcache import credits, leads
from crmcache.errors import HoldClosed, InsufficientCredits
from crmcache.leads import LEAD_OPERATION

router = APIRouter(tags=["credits"])

_ERRORS = COMMON_ERRORS


@router.get(
    "/api/credits/validate",
    response_model=CreditValidation,
    responses={
        **_ERRORS,
        **CONSISTENCY_ERRORS,
        404: {"model": ErrorResponse, "description": "unknown operation/user"},
    },
    summary="Can the user afford the operation?",
)
async def validate_credits(
    request: Request,
    operation: Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)],
    userId: Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)],
    level: Annotated[Consistency, Depends(requested)],
) -> JSONResponse:
    watch = Stopwatch()
    tenant, service = tenant_of(request), service_of(request)
    reader = await fastpath.reader_for(service.readers, tenant)
    answer = await fastpath.credit_cost(reader, operation, level)
    cost = answer.cost
    if cost is None:
        raise ApiError(
            404,
            "operation_not_configured",
            "operation not configured",
            operation=operation,
            cached=answer.cached,
        )
    strong = not isinstance(level, MinimizeLatency)
    available, found, balance_cached, balance_stale = await fastpath.balance(
        service, reader, tenant, userId, strong
    )
    if not found or available is None:
        raise ApiError(404, "user_not_found", "no such user", userId=userId)
    # Hot path: the dict goes out as is; response_model still documents it, and the
    # schemathesis test checks every answer against it.
    return tokened(
        {
            "operation": operation,
            "creditCost": cost,
            "availableCredits": available,
            "canAfford": available >= cost,
            "cached": answer.cached and balance_cached,
            "stale": answer.stale or balance_stale,
            "responseTimeMs": watch.elapsed_ms(),
        },
        answer.token,
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
    lead_request = leads.LeadRequest(
        tenant=tenant,
        user_id=body.userId,
        lead_data=body.leadData.model_dump(mode="json", exclude_none=True),
        cost=0,
        idempotency_key=idempotency_key,
        fingerprint=credits.fingerprint(
            ["POST /api/leads", body.userId, body.leadData.model_dump(mode="json")]
        ),
    )
    answer = leads.committed_replay(service.store, lead_request)
    if answer is None:
        answer = _charge_new_lead(service, lead_request)
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    service.metrics.deductions.labels(tenant, "replayed" if answer.replayed else "charged").inc()
    return LeadCreated(
        leadId=answer.lead_id, creditsDeducted=answer.amount, remainingCredits=answer.remaining
    )


def _charge_new_lead(service: ApiService, lead_request: leads.LeadRequest) -> leads.LeadCharged:
    tenant, user_id = lead_request.tenant, lead_request.user_id
    reader = service.readers.get(tenant)
    cost = reader.get_credit_cost(LEAD_OPERATION)
    if cost is None:  # 0 is a cost
        raise ApiError(
            409,
            "operation_not_configured",
            "lead creation is not configured",
            operation=LEAD_OPERATION,
        )
    if not reader.check_permission(user_id, LEAD_OPERATION):
        raise ApiError(
            403,
            "forbidden",
            f"the user may not {LEAD_OPERATION}",
            userId=user_id,
            permission=LEAD_OPERATION,
        )
    try:
        answer = leads.create_lead(
            service.store,
            service.wrapper,
            service.lead_store,
            dataclasses.replace(lead_request, cost=cost),
            timeout_s=service.settings.hold_timeout,
            ttl_s=service.settings.idempotency_ttl,
            read_through=lambda: reader.get_user_credits_detail(user_id),
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
    except HoldClosed:
        raise ApiError(
            503,
            "lead_timed_out",
            "the lead was not written before its reservation timed out; nothing was charged: retry",
        ) from None
    service.after_charge(tenant, answer.hold, answer.settle_now)
    return answer


@router.get(
    "/api/leads/{leadId}",
    response_model=Lead,
    responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "no such lead"}},
    summary="A lead created through POST /api/leads (only the caller's tenant's)",
)
def get_lead(
    request: Request,
    leadId: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]{1,64}$")],
) -> Lead:
    tenant, service = tenant_of(request), service_of(request)
    lead = service.lead_store.get(tenant, leadId)
    if lead is None:
        raise ApiError(404, "lead_not_found", "no such lead", leadId=leadId)
    body = lead.as_json()
    body["creditsDeducted"] = credits.as_number(lead.credits)
    return Lead(**body)
