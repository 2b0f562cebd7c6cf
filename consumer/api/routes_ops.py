"""Operations: health, readiness, Prometheus metrics, and the seed's test-credit-check."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from consumer.api.auth import tenant_of
from consumer.api.deps import Stopwatch, service_of
from consumer.api.models import IDENT_PATTERN, ErrorResponse, Health, Readiness, TestCreditCheck
from crmcache.errors import CrmCacheError, WrapperError

router = APIRouter()

IdentQuery = Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)]


@router.get("/healthz", response_model=Health, tags=["operations"], summary="Process is up")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Redis down or a tenant not ready"}},
    tags=["operations"],
    summary="Redis reachable and every served tenant's critical data loaded (one round trip)",
)
def readyz(request: Request) -> JSONResponse:
    redis_ok, tenants = service_of(request).readiness()
    ready = redis_ok and all(tenants.values())
    body = Readiness(status="ready" if ready else "not ready", redis=redis_ok, tenants=tenants)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text exposition"}},
)
def metrics(request: Request) -> Response:
    service = service_of(request)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/api/test-credit-check",
    response_model=TestCreditCheck,
    responses={
        401: {"model": ErrorResponse, "description": "missing or unknown API key"},
        422: {"model": ErrorResponse, "description": "invalid request"},
        503: {"model": ErrorResponse, "description": "cache or tenant data unavailable"},
    },
    tags=["credits"],
    summary="The seed's usage example: cost, affordability, profile, permission and metrics",
)
def test_credit_check(
    request: Request,
    operation: IdentQuery = "crm.leads.create",
    userId: IdentQuery = "user-456",
) -> TestCreditCheck:
    watch = Stopwatch()
    tenant, service = tenant_of(request), service_of(request)
    reader = service.readers.get(tenant)
    cost = reader.get_credit_cost(operation)
    has_permission = reader.check_permission(userId, operation)
    try:
        profile = reader.get_user_profile(userId)
        available = reader.get_user_credits(userId)
    except (WrapperError, CrmCacheError):
        # An unknown user or a Wrapper outage: this diagnostic still answers what it knows.
        profile, available = None, None
    return TestCreditCheck(
        operation=operation,
        userId=userId,
        cost=cost,
        availableCredits=available,
        canAfford=cost is not None and available is not None and available >= cost,
        hasPermission=has_permission,
        profile=profile if isinstance(profile, dict) else None,
        metrics=reader.get_metrics(),
        responseTimeMs=watch.elapsed_ms(),
    )
