"""Every error the API answers is JSON ``{"error": <code>, "message": <text>, ...}``.

Handlers here turn the project's exceptions into status codes, so that routes raise and never
format errors themselves; nothing a client sends can produce a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmcache.errors import (
    BalanceUnknown,
    CrmCacheError,
    HoldClosed,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    LeadStoreUnavailable,
    StoreUnavailable,
    TenantNotReady,
    TokenNotReached,
    WrapperNotFound,
    WrapperUnavailable,
)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success, raised by a route."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def _json(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status)


# Project exceptions a route lets through: status, error code, whether the detail is safe.
_MAPPED: tuple[tuple[type[Exception], int, str, str], ...] = (
    (HoldNotFound, 404, "hold_not_found", "no such reservation"),
    (HoldClosed, 409, "hold_closed", ""),
    (LeadStoreUnavailable, 503, "database_unavailable", "the leads database is unavailable"),
    (InsufficientCredits, 402, "insufficient_credits", ""),
    (IdempotencyConflict, 409, "idempotency_key_reused", ""),
    (BalanceUnknown, 404, "user_not_found", ""),
    (WrapperNotFound, 404, "not_found", "the Wrapper knows no such entity"),
    (
        TenantNotReady,
        503,
        "tenant_not_ready",
        "the tenant's critical data is not loaded (never preloaded, or Redis lost it and the "
        "resync is under way)",
    ),
    (
        StoreUnavailable,
        503,
        "cache_unavailable",
        "the cache (Redis) is unavailable, or restarted and lost its data",
    ),
    (WrapperUnavailable, 503, "upstream_unavailable", "the Wrapper is unavailable"),
)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = _json(exc.status, exc.code, exc.message, **exc.extra)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # loc/msg/type only: pydantic's 'input' would echo what was sent (maybe a secret).
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:300]}
            for e in exc.errors()[:20]
        ]
        return _json(422, "invalid_request", "the request is invalid", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = _json(exc.status_code, code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(CrmCacheError)
    async def crmcache_error(request: Request, exc: CrmCacheError) -> JSONResponse:
        if isinstance(exc, TokenNotReached):
            return _json(
                409,
                "token_not_reached",
                str(exc),
                token=exc.asked,
                current=exc.current,
                waitedMs=round(exc.waited_ms, 1),
            )
        for exc_type, status, code, message in _MAPPED:
            if isinstance(exc, exc_type):
                return _json(status, code, message or str(exc))
        logger.warning("%s %s failed: %r", request.method, request.url.path, exc)
        return _json(503, "unavailable", "the service cannot answer now")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _json(500, "internal_error", "internal error")
