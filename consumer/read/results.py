"""What the read API returns: plain immutable values with the freshness a caller needs.

``source`` says where an answer came from: ``near-cache`` (this process's copy, confirmed
against Redis at most CRM_NEAR_CACHE_STALENESS_MS ago), ``redis``, ``wrapper`` (just fetched),
or ``last-known-good`` (Redis or the Wrapper failed; ``stale`` is then True). ``age_ms`` is how
long ago the answer was last known to be current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["near-cache", "redis", "wrapper", "last-known-good"]
Number = int | float


@dataclass(frozen=True, slots=True)
class CreditCost:
    """An operation's cost; ``cost`` None means "not configured" (only said of a ready tenant)."""

    operation: str
    cost: Number | None
    cached: bool
    stale: bool
    age_ms: float
    source: Source

    @property
    def configured(self) -> bool:
        return self.cost is not None


@dataclass(frozen=True, slots=True)
class PermissionCheck:
    """May ``user_id`` do ``permission``; ``reason`` is a ``permissions.Decision`` value."""

    user_id: str
    permission: str
    authorized: bool
    reason: str
    cached: bool
    stale: bool
    age_ms: float
    source: Source


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """A profile, hierarchy node or balance. ``found`` False: the Wrapper said 404 (``value``
    None). ``expires_at``: epoch seconds when the cached entry stops being fresh, None for
    balances (kept up to date in Redis, no TTL) and for values not cached."""

    value: Any
    found: bool
    cached: bool
    stale: bool
    expires_at: float | None
    age_ms: float
    source: Source
