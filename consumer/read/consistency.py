"""Consistency levels a critical read can ask for, and their string forms.

- ``minimize_latency`` (the default): the near-cache when it is trusted, else Redis; degraded
  mode may answer from the last-known-good copy.
- ``at_least_as_fresh:<token>``: only data at or past the token (crmcache/tokens.py): the
  near-cache when its version satisfies the token, else Redis, waiting up to
  CRM_CONSISTENCY_WAIT_MS for Redis to get there (then ``TokenNotReached``).
- ``fully_consistent``: skip the near-cache; one Redis round trip.

The two strong levels never answer from last-known-good: Redis down is ``StoreUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass

from crmcache.tokens import InvalidToken, Token, parse_token

MINIMIZE_LATENCY = "minimize_latency"
AT_LEAST_AS_FRESH = "at_least_as_fresh"
FULLY_CONSISTENT = "fully_consistent"
LEVELS = (MINIMIZE_LATENCY, AT_LEAST_AS_FRESH, FULLY_CONSISTENT)


@dataclass(frozen=True, slots=True)
class MinimizeLatency:
    def __str__(self) -> str:
        return MINIMIZE_LATENCY


@dataclass(frozen=True, slots=True)
class FullyConsistent:
    def __str__(self) -> str:
        return FULLY_CONSISTENT


@dataclass(frozen=True, slots=True)
class AtLeastAsFresh:
    token: Token

    def __init__(self, token: Token | str) -> None:
        object.__setattr__(self, "token", parse_token(token) if isinstance(token, str) else token)

    def __str__(self) -> str:
        return f"{AT_LEAST_AS_FRESH}:{self.token}"


Consistency = MinimizeLatency | AtLeastAsFresh | FullyConsistent
ConsistencyArg = Consistency | str | None
DEFAULT = MinimizeLatency()


def consistency_of(value: ConsistencyArg, token: str | None = None) -> Consistency:
    """A level from a ``Consistency``, its string form, or (HTTP) a level name plus a separate
    ``token``: a token alone, or with the bare name ``at_least_as_fresh``, asks for
    ``at_least_as_fresh``; None is the default. ``InvalidToken`` (a ValueError) for anything
    else: a token with another level, two different tokens, ``at_least_as_fresh`` without one."""
    if not isinstance(value, str) and value is not None:
        if token:
            raise InvalidToken("a token goes in the level: AtLeastAsFresh(token)")
        return value
    name, colon, inline = (value or "").partition(":")
    if value == AT_LEAST_AS_FRESH and not token:
        raise InvalidToken("at_least_as_fresh needs a token: at_least_as_fresh:<token>")
    if name in ("", AT_LEAST_AS_FRESH) and (token or inline):
        if colon and token and token != inline:
            raise InvalidToken("at_least_as_fresh needs exactly one token, not two")
        return AtLeastAsFresh(inline or token or "")
    if not colon and not token and name in ("", MINIMIZE_LATENCY, FULLY_CONSISTENT):
        return FullyConsistent() if name == FULLY_CONSISTENT else DEFAULT
    if token and not colon and name in (MINIMIZE_LATENCY, FULLY_CONSISTENT):
        raise InvalidToken(f"a token goes with consistency={AT_LEAST_AS_FRESH}, not {name}")
    raise InvalidToken(f"consistency is one of {', '.join(LEVELS)} (at_least_as_fresh:<token>)")
