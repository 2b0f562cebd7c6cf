"""Consistency tokens: which version of one tenant's data an answer was computed from, or a
write produced.

A token is an opaque string to callers. Two forms:

- ``v1.<epoch>.<version>``: the tenant's ``meta.version`` (bumped by every applied event batch,
  preload and deduction) within its ``meta.epoch`` (a random id that a Redis which lost its
  data does not have any more). Writes return one; every answer carries one.
- ``<stream>:<seq>``: the Wrapper's own sequence on one input stream (``users:1234``: at least
  the user stream's event 1234 applied), for a caller that knows the seq of what it published.

``satisfies`` says whether data at a given (epoch, version, upstream seqs) is at or past a
token. A version token of another epoch is satisfied once the tenant is ready again in the
current one: Redis lost the data the token named, and the preload that made the tenant ready
again read the Wrapper (the source of truth) after the write behind the token was acknowledged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from crmcache.keyspace import STREAMS
from crmcache.store_base import text as redis_text

VERSION_PREFIX = "v1"
_EPOCH_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_MAX_COUNT = 2**63 - 1
MAX_TOKEN_LENGTH = 160
TOKEN_PATTERN = (
    rf"(?:{VERSION_PREFIX}\.[0-9A-Za-z_-]{{1,64}}\.[0-9]{{1,18}}"
    rf"|(?:{'|'.join(STREAMS)}):[0-9]{{1,18}})"
)
"""Every token a caller gets (a regex without anchors, for the HTTP API's documented schema;
a count of 19 digits parses too, but no tenant gets there)."""


class InvalidToken(ValueError):
    """A string that is not a token crmcache made (a 400 for an HTTP caller)."""


@dataclass(frozen=True, slots=True)
class VersionToken:
    """``v1.<epoch>.<version>``: the tenant's data at ``meta.version`` or later."""

    epoch: str
    """``meta.epoch``: a random id that a Redis which lost its data does not have any more."""
    version: int

    def __str__(self) -> str:
        return f"{VERSION_PREFIX}.{self.epoch}.{self.version}"


@dataclass(frozen=True, slots=True)
class SeqToken:
    """``<stream>:<seq>``: the Wrapper's events on ``stream`` applied up to its ``seq``."""

    stream: str
    seq: int

    def __str__(self) -> str:
        return f"{self.stream}:{self.seq}"


Token = VersionToken | SeqToken


def version_token(epoch: bytes | str | None, version: int | bytes | str | None) -> str:
    """The token of ``version`` in ``epoch`` ("" when the tenant has no epoch yet), both as
    Redis answers them."""
    current = redis_text(epoch or "")
    return str(VersionToken(current, int(version or 0))) if current else ""


def parse_token(text: str) -> Token:
    """A token from its string form; ``InvalidToken`` for anything else."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_LENGTH:
        raise InvalidToken("a token is a non-empty string of at most 160 characters")
    if text.startswith(f"{VERSION_PREFIX}."):
        epoch, dot, version = text[len(VERSION_PREFIX) + 1 :].rpartition(".")
        if dot and _EPOCH_RE.fullmatch(epoch) and _count(version) is not None:
            return VersionToken(epoch, int(version))
        raise InvalidToken(f"malformed version token {text[:80]!r}")
    stream, colon, seq = text.rpartition(":")
    if colon and stream in STREAMS and _count(seq) is not None:
        return SeqToken(stream, int(seq))
    raise InvalidToken(
        f"{text[:80]!r} is neither a version token (v1.<epoch>.<version>) nor "
        f"<stream>:<seq> with stream one of {', '.join(STREAMS)}"
    )


def _count(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value <= _MAX_COUNT else None


def satisfies(
    token: Token,
    *,
    epoch: bytes | str | None,
    version: int,
    ready: bool,
    upstream: Mapping[str, int] | None = None,
) -> bool:
    """Whether data at (epoch, version) of a tenant (``ready`` or not), with the highest
    contiguous upstream seq applied per stream in ``upstream``, is at or past ``token``."""
    if isinstance(token, SeqToken):
        return (upstream or {}).get(token.stream, 0) >= token.seq
    current = redis_text(epoch or "")
    if current == token.epoch:
        return version >= token.version
    return ready and bool(current)
