"""The project's own exception types. Library errors are translated into these at the seam
(the store for Redis, the Wrapper client for HTTP), so everything above handles only these.
The plain errors first, then those that carry details (``reason``, ``available``, ...)."""


class CrmCacheError(Exception):
    """Base of every crmcache error."""


class InvalidTenant(CrmCacheError):
    """A tenant id outside ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$."""


class StoreUnavailable(CrmCacheError):
    """Redis (the cache) could not be reached or did not answer in time."""


class WrapperError(CrmCacheError):
    """The Wrapper answered with something we cannot use (4xx other than 404, bad JSON)."""


class WrapperUnavailable(WrapperError):
    """The Wrapper is down: connection error, timeout, 5xx after retries, or breaker open."""


class WrapperNotFound(WrapperError):
    """The Wrapper answered 404 for the entity asked for."""


class TenantNotReady(CrmCacheError):
    """The tenant's critical data was never loaded: a miss means 'unknown', not 'absent'."""


class IdempotencyConflict(CrmCacheError):
    """An idempotency key replayed with a different request; nothing was charged."""


class BalanceUnknown(CrmCacheError):
    """The user's balance is neither cached nor obtainable from the Wrapper (unknown user)."""


class HoldNotFound(CrmCacheError):
    """No such credit hold in this tenant (never reserved, or its record expired)."""


class LeadStoreUnavailable(CrmCacheError):
    """The leads database could not be reached or did not answer in time."""


class InvalidEvent(CrmCacheError):
    """A pub/sub message that breaks the event contract; `reason` says how."""

    def __init__(self, reason: str, tenant: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tenant = tenant


class StaleDataTooOld(StoreUnavailable):
    """Redis is unreachable and the reader's last-known-good copy is older than the configured
    maximum age (CRM_DEGRADED_MAX_AGE): the reader refuses to answer rather than guess."""

    def __init__(self, message: str, age_ms: float | None = None) -> None:
        super().__init__(message)
        self.age_ms = age_ms


class InsufficientCredits(CrmCacheError):
    """A deduction larger than the user's available balance; nothing was charged."""

    def __init__(self, available: str, required: str) -> None:
        super().__init__(f"insufficient credits: {available} available, {required} required")
        self.available = available
        self.required = required


class HoldClosed(CrmCacheError):
    """The hold can no longer do what was asked: `state` is committed, voided or expired."""

    def __init__(self, hold_id: str, state: str) -> None:
        super().__init__(f"hold {hold_id} is {state}")
        self.hold_id = hold_id
        self.state = state


class TokenNotReached(CrmCacheError):
    """An ``at_least_as_fresh`` read whose token the cache did not reach within
    CRM_CONSISTENCY_WAIT_MS: ``asked`` is the token, ``current`` the token of what Redis holds."""

    def __init__(self, asked: str, current: str, waited_ms: float) -> None:
        super().__init__(
            f"the cache is at {current or 'no version'}, not yet at {asked}, "
            f"after waiting {waited_ms:.0f} ms"
        )
        self.asked = asked
        self.current = current
        self.waited_ms = waited_ms
