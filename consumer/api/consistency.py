"""Per-request consistency of the critical reads, and the token every critical answer carries.

A caller picks the level (consumer/read/consistency.py) with the ``consistency`` query
parameter or the ``X-CRM-Consistency`` header, in the same syntax: ``minimize_latency`` (the
default), ``fully_consistent``, or ``at_least_as_fresh:<token>`` (the token may instead come
in the ``token`` query parameter). A malformed level or token is a 422 in the query (the
documented patterns) and a 400 in the header; a token with another level, or two different
tokens, is a 400; a token the cache did not reach in time is a 409 (consumer/api/errors.py).
Every critical answer carries the token of the data it was computed from, in its JSON
(``token``) and in the ``X-CRM-Token`` header.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import JSONResponse

from consumer.api.errors import ApiError
from consumer.api.models import ErrorResponse
from consumer.read.consistency import Consistency, consistency_of
from crmcache.tokens import TOKEN_PATTERN, InvalidToken

CONSISTENCY_HEADER = "X-CRM-Consistency"
TOKEN_HEADER = "X-CRM-Token"
PARAMETERS = ("consistency", "token")
"""Query parameters that ask for a level: the in-front hot path leaves such requests to the
routes (consumer/api/hot.py)."""

CONSISTENCY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "malformed consistency level or token"},
    409: {
        "model": ErrorResponse,
        "description": "at_least_as_fresh: the cache did not reach the token in time",
    },
}

ConsistencyQuery = Annotated[
    str | None,
    Query(
        pattern=rf"^(?:minimize_latency|fully_consistent|at_least_as_fresh(?::{TOKEN_PATTERN})?)$",
        description="minimize_latency (default), fully_consistent, or "
        "at_least_as_fresh:<token> (or at_least_as_fresh with the token parameter); the "
        "X-CRM-Consistency header takes the same values",
    ),
]
TokenQuery = Annotated[
    str | None,
    Query(
        pattern=rf"^{TOKEN_PATTERN}$",
        description="at least as fresh as this token (alone, or with "
        "consistency=at_least_as_fresh): an answer's or a write's "
        "token (v1.<epoch>.<version>) or an upstream event's <stream>:<seq>",
    ),
]


def requested(
    request: Request, consistency: ConsistencyQuery = None, token: TokenQuery = None
) -> Consistency:
    """The level a request asks for (a FastAPI dependency); 400 ``invalid_consistency``."""
    header = request.headers.get(CONSISTENCY_HEADER)
    if header is not None and consistency is not None and header != consistency:
        raise ApiError(
            400,
            "invalid_consistency",
            f"the consistency query parameter and the {CONSISTENCY_HEADER} header differ",
        )
    try:
        return consistency_of(consistency if consistency is not None else header, token)
    except InvalidToken as exc:
        raise ApiError(400, "invalid_consistency", str(exc)) from None


def tokened(body: dict[str, Any], token: str) -> JSONResponse:
    """A critical answer: its JSON with ``token``, and the ``X-CRM-Token`` header."""
    body["token"] = token
    response = JSONResponse(body)
    if token:
        response.headers[TOKEN_HEADER] = token
    return response
