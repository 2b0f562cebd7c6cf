"""The two hot reads answered in front of FastAPI: ``GET /api/permissions/check`` and
``GET /api/credits/validate``, when the caller's key is valid, the parameters are valid and the
tenant's reader holds everything the answer needs in its near-cache (pure memory, no I/O).

Everything else — no or an unknown key, a missing or invalid parameter, a consistency level
asked for (query parameter or header, consumer/api/consistency.py), anything the near-cache
lacks, an operation not configured — goes on to the FastAPI routes unchanged, which answer as
documented (errors, the thread-pool and Redis fallbacks, the OpenAPI document all stay there).
So this layer can only answer what the route would answer, the same JSON; the tests compare
the two.

Why: measured with ``python -m benchmarks.api_bench`` (docs/http-api.md), FastAPI's routing,
query validation, request object and response handling cost more than a near-cache answer, so
the routes alone reached about half of a bare FastAPI endpoint's throughput.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from consumer.api.auth import presented_key
from consumer.api.consistency import CONSISTENCY_HEADER, PARAMETERS, TOKEN_HEADER
from consumer.api.models import IDENT_PATTERN
from consumer.api.readers import TenantReader
from consumer.api.service import ApiService

PERMISSIONS_PATH = "/api/permissions/check"
VALIDATE_PATH = "/api/credits/validate"

_ident = re.compile(IDENT_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
"""The routes' IDENT_PATTERN as a full match (its ``$`` would also accept a trailing newline)."""

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
"""What starlette's JSONResponse renders with."""

Answer = Callable[[TenantReader, dict[str, str], float], dict[str, Any] | None]
"""(reader, query parameters, start) -> the JSON answer, or None: the route answers."""


def _permission(
    reader: TenantReader, params: dict[str, str], start: float
) -> dict[str, Any] | None:
    user_id, permission = params.get("userId"), params.get("permission")
    if user_id is None or permission is None or not _ident(user_id) or not _ident(permission):
        return None
    answer = reader.peek_permission_detail(user_id, permission)
    if answer is None:
        return None
    return {
        "userId": user_id,
        "permission": permission,
        "authorized": answer.authorized,
        "cached": answer.cached,
        "stale": answer.stale,
        "responseTimeMs": round((time.perf_counter() - start) * 1000, 3),
        "token": answer.token,
    }


def _validate(reader: TenantReader, params: dict[str, str], start: float) -> dict[str, Any] | None:
    operation, user_id = params.get("operation"), params.get("userId")
    if operation is None or user_id is None or not _ident(operation) or not _ident(user_id):
        return None
    answer = reader.peek_credit_cost_detail(operation)
    if answer is None or answer.cost is None:
        return None
    available = reader.peek_user_credits(user_id)
    if available is None:
        return None
    return {
        "operation": operation,
        "creditCost": answer.cost,
        "availableCredits": available,
        "canAfford": available >= answer.cost,
        "cached": answer.cached,
        "stale": answer.stale,
        "responseTimeMs": round((time.perf_counter() - start) * 1000, 3),
        "token": answer.token,
    }


_LEVEL_HEADER = CONSISTENCY_HEADER.lower().encode()
_TOKEN_HEADER = TOKEN_HEADER.lower().encode()

_ROUTES: dict[str, Answer] = {PERMISSIONS_PATH: _permission, VALIDATE_PATH: _validate}


class HotReads:
    """ASGI middleware: answers the hot reads it can, passes every other request on."""

    def __init__(self, app: ASGIApp, service: ApiService) -> None:
        self.app = app
        self.service = service
        self.timers = {
            path: service.metrics.requests.labels(path, "GET", "200") for path in _ROUTES
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            answer = _ROUTES.get(scope["path"])
            if answer is not None:
                start = time.perf_counter()
                found = self._answer(answer, scope, start)
                if found is not None:
                    body, token = found
                    headers = [
                        (b"content-length", str(len(body)).encode()),
                        (b"content-type", b"application/json"),
                    ]
                    if token:
                        headers.append((_TOKEN_HEADER, token.encode()))
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    self.timers[scope["path"]].observe(time.perf_counter() - start)
                    return
        await self.app(scope, receive, send)

    def _answer(self, answer: Answer, scope: Scope, start: float) -> tuple[bytes, str] | None:
        """(the JSON body, its token), or None: the route answers."""
        service = self.service
        headers = scope["headers"]
        tenant = service.keys.tenant_of(presented_key(headers))
        if tenant is None or any(name == _LEVEL_HEADER for name, _ in headers):
            return None
        reader = service.readers.peek(tenant)
        if reader is None:
            return None
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if any(name in params for name in PARAMETERS):
            return None
        result = answer(reader, params, start)
        if result is None:
            return None
        try:
            return _dumps(result).encode(), result["token"]
        except ValueError:  # a non-finite number: the route answers (and says what is wrong)
            return None
