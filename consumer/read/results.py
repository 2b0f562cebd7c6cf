"""What the read API's ``*_detail`` methods return: immutable values with the freshness a caller
needs. The seed-named methods (``get_credit_cost``, ``check_permission``, ...) return the plain
value out of these.

``source`` says where an answer came from: ``near-cache`` (this process's copy, confirmed
against Redis at most CRM_NEAR_CACHE_STALENESS_MS ago), ``redis``, ``wrapper`` (just fetched),
or ``last-known-good`` (Redis or the Wrapper failed; ``stale`` is then True). ``age_ms`` is how
long ago the answer was last known to be current. ``token`` is the consistency token
(crmcache/tokens.py) of the data the answer was computed from; for reference data and balances,
the tenant's version when the entry was read from or written to Redis (every invalidation up to
it applied). "" when none is known: an answer without Redis, or a tenant Redis never gave an
epoch. Pass it to a later read as
``consistency=AtLeastAsFresh(token)`` (consumer/read/consistency.py).

A detail is never a boolean: ``if crm.check_permission_detail(...)`` would be true for a denied
user, so truth-testing one raises ``TypeError`` naming the field to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NoReturn

Source = Literal["near-cache", "redis", "wrapper", "last-known-good"]
Number = int | float


class NotABoolean:
    """Refuses truth-testing; ``read_instead`` names the field that holds the answer."""

    __slots__ = ()
    read_instead: ClassVar[str]

    def __bool__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is not a boolean: read {self.read_instead}")


@dataclass(frozen=True, slots=True)
class CreditCost(NotABoolean):
    """An operation's cost; ``cost`` None means "not configured" (only said of a ready tenant)."""

    read_instead: ClassVar[str] = ".cost (None: not configured; 0 is a cost) or .configured"

    operation: str
    cost: Number | None
    cached: bool
    stale: bool
    age_ms: float
    source: Source
    token: str = ""

    @property
    def configured(self) -> bool:
        return self.cost is not None


@dataclass(frozen=True, slots=True)
class PermissionCheck(NotABoolean):
    """May ``user_id`` do ``permission``; ``reason`` is a ``permissions.Decision`` value."""

    read_instead: ClassVar[str] = ".authorized"

    user_id: str
    permission: str
    authorized: bool
    reason: str
    cached: bool
    stale: bool
    age_ms: float
    source: Source
    token: str = ""


@dataclass(frozen=True, slots=True)
class ReferenceResult(NotABoolean):
    """A profile, hierarchy node or balance. ``found`` False: the Wrapper said 404 (``value``
    None). ``expires_at``: epoch seconds when the cached entry stops being fresh, None for
    balances (kept up to date in Redis, no TTL) and for values not cached."""

    read_instead: ClassVar[str] = ".found or .value"

    value: Any
    found: bool
    cached: bool
    stale: bool
    expires_at: float | None
    age_ms: float
    source: Source
    token: str = ""
