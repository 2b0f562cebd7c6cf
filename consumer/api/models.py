"""Request and response models: the OpenAPI document's schemas, with size limits."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

IDENT_PATTERN = r"^[!-~]{1,256}$"
"""User ids, permissions and operation codes: printable ASCII without spaces, <= 256."""

EMAIL_PATTERN = r"^[^@ \t\n\r\f\v]+@[^@ \t\n\r\f\v]+\.[^@ \t\n\r\f\v]+$"
r"""An email's shape. Spaces spelt out, not ``\s``: Python's ``\s`` also matches U+0085 and
U+001C-U+001F, JSON Schema's (ECMA-262) does not, and the OpenAPI document must say exactly
what the API accepts (schemathesis found an address the schema allowed and the API refused)."""
Ident = Annotated[str, Field(min_length=1, max_length=256, pattern=IDENT_PATTERN)]
Number = int | float
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
CustomValue = Annotated[str, Field(max_length=500)] | int | float | bool | None

MAX_BODY_BYTES = 64 * 1024


class LeadData(BaseModel):
    """A lead as the CRM captures it. Unknown fields are refused (422), not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    email: Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN)] | None = None
    company: ShortText | None = None
    phone: Annotated[str, Field(max_length=40, pattern=r"^[0-9+()./ -]{3,40}$")] | None = None
    source: Annotated[str, Field(max_length=100)] | None = None
    notes: Annotated[str, Field(max_length=4000)] | None = None
    customFields: Annotated[
        dict[Annotated[str, Field(max_length=64)], CustomValue], Field(max_length=50)
    ] = Field(default_factory=dict)


class CreateLeadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    userId: Ident
    leadData: LeadData


class LeadCreated(BaseModel):
    leadId: str
    creditsDeducted: Number
    remainingCredits: Number


class Lead(BaseModel):
    """A lead as stored in the leads database."""

    leadId: str
    userId: str
    leadData: dict[str, Any]
    createdAt: str
    creditsDeducted: Number


class ReserveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    userId: Ident
    operation: Ident
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, description="credits to hold; by default the operation's cost"
    )


class CommitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resultRef: Annotated[str, Field(max_length=256, pattern=r"^[!-~]*$")] = Field(
        default="", description="what the credits paid for (kept with the charge)"
    )


class Reservation(BaseModel):
    holdId: str
    userId: str
    operation: str
    amount: Number
    state: str = Field(description="held, committed, voided or expired")
    availableCredits: Number = Field(description="the user's available credits after reserving")
    expiresAt: str = Field(description="ISO-8601 UTC: an open hold voids itself then")
    resultRef: str = ""


class ReservationClosed(BaseModel):
    holdId: str
    state: str
    deductionId: str | None = None
    resultRef: str | None = None
    availableCredits: Number | None = None


class CreditBalance(BaseModel):
    userId: str
    availableCredits: Number
    heldCredits: Number


TOKEN_DESCRIPTION = (
    "the version of the tenant's data the answer was computed from (also in the X-CRM-Token "
    "header): pass it back as consistency=at_least_as_fresh:<token>"
)


class CreditValidation(BaseModel):
    operation: str
    creditCost: Number
    availableCredits: Number
    canAfford: bool
    cached: bool
    stale: bool
    responseTimeMs: float
    token: str = Field(description=TOKEN_DESCRIPTION)


class PermissionCheck(BaseModel):
    userId: str
    permission: str
    authorized: bool
    cached: bool
    stale: bool
    responseTimeMs: float
    token: str = Field(description=TOKEN_DESCRIPTION)


class UserProfile(BaseModel):
    """The Wrapper's profile fields, plus how this answer was served."""

    model_config = ConfigDict(extra="allow")

    cached: bool
    stale: bool
    cacheExpiry: str | None = Field(description="ISO-8601 UTC time the cached entry expires")
    token: str = Field(
        description="the tenant's version when the profile was read from or written to the "
        "cache (every invalidation up to it applied; also in X-CRM-Token); empty when Redis "
        "did not answer"
    )


class TestCreditCheck(BaseModel):
    operation: str
    userId: str
    cost: Number | None
    availableCredits: Number | None
    canAfford: bool
    hasPermission: bool
    profile: dict[str, Any] | None
    metrics: dict[str, Any]
    responseTimeMs: float


class ErrorResponse(BaseModel):
    error: str = Field(description="a stable machine-readable code")
    message: str
    model_config = ConfigDict(extra="allow")


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or unknown API key"},
    422: {"model": ErrorResponse, "description": "invalid request"},
    503: {"model": ErrorResponse, "description": "cache, Wrapper or tenant data unavailable"},
}
"""The answers every /api route may give besides its own."""


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    redis: bool
    tenants: dict[str, bool]
