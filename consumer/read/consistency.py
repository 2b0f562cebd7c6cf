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
    ``token``; None is the default. ``InvalidToken`` (a ValueError) for anything else."""
    if value is None or value == "":
        if token:
            raise InvalidToken("a token needs consistency=at_least_as_fresh")
        return DEFAULT
    if not isinstance(value, str):
        return value
    name, colon, inline = value.partition(":")
    if name == AT_LEAST_AS_FRESH:
        text = inline if colon else token
        if not text or (colon and token and token != inline):
            raise InvalidToken("at_least_as_fresh needs exactly one token")
        return AtLeastAsFresh(text)
    if not colon and not token and name in (MINIMIZE_LATENCY, FULLY_CONSISTENT):
        return DEFAULT if name == MINIMIZE_LATENCY else FullyConsistent()
    raise InvalidToken(f"consistency is one of {', '.join(LEVELS)} (at_least_as_fresh:<token>)")
