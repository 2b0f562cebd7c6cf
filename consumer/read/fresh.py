"""The strong consistency levels of a critical read (consumer/read/consistency.py), over any
read: ``fully_consistent`` is one Redis read; ``at_least_as_fresh`` takes the near-cache's
answer only when the token it carries is at or past the one asked, else reads Redis (the Lua
read returns the data with the meta version and upstream seq it belongs to), waiting for the
tenant's change notification between reads, up to CRM_CONSISTENCY_WAIT_MS.

Neither level ever answers from last-known-good: the Redis read passed in raises
``StoreUnavailable`` / ``TenantNotReady`` instead of falling back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from consumer.read.connection import Meta
from consumer.read.consistency import AtLeastAsFresh, FullyConsistent
from consumer.read.near_cache import NearCache
from crmcache.errors import TokenNotReached
from crmcache.keyspace import META_UPSTREAM_SEQ_PREFIX
from crmcache.tokens import InvalidToken, SeqToken, Token, VersionToken, parse_token, satisfies

FIRST_PAUSE_S = 0.002
MAX_PAUSE_S = 0.02
"""Between two Redis reads the waiter sleeps on the tenant's change notification, at most this
long (a notification that came between the read and the sleep, or got lost, costs one pause)."""


class Tokened(Protocol):
    @property
    def token(self) -> str: ...


A = TypeVar("A", bound=Tokened)
RedisRead = Callable[[str], tuple[A, Meta, int]]
"""Read Redis strictly, returning the answer, the meta it was read at and the upstream seq of
the meta field named by its argument (0 when none)."""


def read_strong(
    level: AtLeastAsFresh | FullyConsistent,
    near: NearCache,
    near_answer: Callable[[], A | None],
    redis_read: RedisRead[A],
    wait_ms: int,
) -> A:
    if isinstance(level, FullyConsistent):
        return redis_read("")[0]
    token = level.token
    if isinstance(token, VersionToken):
        answer = near_answer()
        if answer is not None and _near_satisfies(token, answer.token):
            return answer
    return _wait_for(token, near, redis_read, wait_ms)


def _near_satisfies(token: VersionToken, held: str) -> bool:
    """A near-cache answer's own token against the one asked (same epoch only: an answer of
    another epoch is checked against Redis)."""
    try:
        have = parse_token(held) if held else None
    except InvalidToken:
        return False
    return (
        isinstance(have, VersionToken)
        and have.epoch == token.epoch
        and have.version >= token.version
    )


def _wait_for(token: Token, near: NearCache, redis_read: RedisRead[A], wait_ms: int) -> A:
    field = META_UPSTREAM_SEQ_PREFIX + token.stream if isinstance(token, SeqToken) else ""
    started = time.monotonic()
    deadline = started + wait_ms / 1000.0
    pause = FIRST_PAUSE_S
    while True:
        answer, meta, upstream = redis_read(field)
        seqs = {token.stream: upstream} if isinstance(token, SeqToken) else None
        if satisfies(
            token, epoch=meta.epoch, version=meta.version, ready=meta.ready, upstream=seqs
        ):
            return answer
        now = time.monotonic()
        if now >= deadline:
            raise TokenNotReached(str(token), answer.token, (now - started) * 1000.0)
        near.wait_for_change(min(pause, deadline - now))
        pause = min(pause * 2, MAX_PAUSE_S)
