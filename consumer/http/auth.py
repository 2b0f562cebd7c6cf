"""API-key authentication: the caller's tenant is the tenant its key is bound to, and nothing
else the caller sends (headers such as ``X-Tenant-ID``, the path, the body) can change it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from consumer.http.errors import ApiError

# Declared for the OpenAPI document (either scheme works); auto_error=False so that a missing
# key is our JSON 401, not FastAPI's 403.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
bearer = HTTPBearer(auto_error=False, scheme_name="Bearer")

UNAUTHORIZED = ApiError(
    401,
    "unauthorized",
    "a valid API key is required (X-API-Key: <key> or Authorization: Bearer <key>)",
    headers={"WWW-Authenticate": 'Bearer realm="crmcache"'},
)


async def authenticated_tenant(
    request: Request,
    api_key: Annotated[str | None, Depends(api_key_header)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The tenant of the presented key; 401 otherwise. Async on purpose: no I/O here, and a
    sync dependency would cost a thread-pool hop per request."""
    presented = api_key if api_key else (credentials.credentials if credentials else None)
    tenant: str | None = request.app.state.service.keys.tenant_of(presented)
    if tenant is None:
        raise UNAUTHORIZED
    return tenant


Tenant = Annotated[str, Depends(authenticated_tenant)]
