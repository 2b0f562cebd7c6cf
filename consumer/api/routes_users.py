"""``GET /api/users/{userId}/profile`` and ``GET /api/permissions/check``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from consumer.api import fastpath
from consumer.api.auth import tenant_of
from consumer.api.consistency import CONSISTENCY_ERRORS, requested, tokened
from consumer.api.deps import Stopwatch, iso_time, service_of
from consumer.api.errors import ApiError
from consumer.api.models import (
    COMMON_ERRORS,
    IDENT_PATTERN,
    ErrorResponse,
    PermissionCheck,
    UserProfile,
)
from consumer.read.consistency import Consistency

router = APIRouter(tags=["users"])

_ERRORS = COMMON_ERRORS

# A path segment cannot carry "/" and a "%" is decoded by the server: ids holding either are
# only addressable where they are query parameters.
PATH_IDENT_PATTERN = r"^[!-$&-.0-~]{1,256}$"
UserIdPath = Annotated[str, Path(min_length=1, max_length=256, pattern=PATH_IDENT_PATTERN)]
IdentQuery = Annotated[str, Query(min_length=1, max_length=256, pattern=IDENT_PATTERN)]


@router.get(
    "/api/users/{userId}/profile",
    response_model=UserProfile,
    responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "unknown user"}},
    summary="The user's profile (reference data, read through with a TTL)",
)
def user_profile(request: Request, userId: UserIdPath) -> JSONResponse:
    tenant, service = tenant_of(request), service_of(request)
    answer = service.readers.get(tenant).get_user_profile_detail(userId)
    profile = answer.value
    if profile is None:
        raise ApiError(404, "user_not_found", "no such user", userId=userId)
    if not isinstance(profile, dict):
        profile = {"profile": profile}
    body = {
        **profile,
        "cached": answer.cached,
        "stale": answer.stale,
        "cacheExpiry": iso_time(answer.expires_at),
    }
    return tokened(body, answer.token)


@router.get(
    "/api/permissions/check",
    response_model=PermissionCheck,
    responses={**_ERRORS, **CONSISTENCY_ERRORS},
    summary="May the user do this? (critical data, from the near-cache unless a stronger "
    "consistency is asked)",
)
async def check_permission(
    request: Request,
    userId: IdentQuery,
    permission: IdentQuery,
    level: Annotated[Consistency, Depends(requested)],
) -> JSONResponse:
    watch = Stopwatch()
    tenant, service = tenant_of(request), service_of(request)
    reader = await fastpath.reader_for(service.readers, tenant)
    answer = await fastpath.check_permission(reader, userId, permission, level)
    # Hot path: the dict goes out as is; response_model still documents it, and the
    # schemathesis test checks every answer against it.
    return tokened(
        {
            "userId": userId,
            "permission": permission,
            "authorized": answer.authorized,
            "cached": answer.cached,
            "stale": answer.stale,
            "responseTimeMs": watch.elapsed_ms(),
        },
        answer.token,
    )
