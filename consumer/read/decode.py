"""Decoding what Redis holds into the read side's values: pure functions, no I/O.

Role lists and grants are memoized by their stored text: thousands of users share a few role
lists, and a role's text only changes when the role does, so decoding is usually one dict
lookup (and one object shared by every entry that holds it).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

from consumer.read.permissions import Grants, compile_grants
from consumer.read.results import Number

logger = logging.getLogger(__name__)

T = TypeVar("T")
MEMO_MAX = 10_000


class Memo(Generic[T]):
    """A JSON list decoded once per distinct stored text (bounded: cleared when full)."""

    def __init__(self, build: Callable[[list[object]], T]) -> None:
        self.build = build
        self._memo: dict[bytes, T] = {}

    def __call__(self, raw: bytes) -> T:
        value = self._memo.get(raw)
        if value is None:
            value = self.build(json_list(raw))
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()
            self._memo[raw] = value
        return value


def json_list(raw: bytes) -> list[object]:
    """A stored JSON list; [] for anything else (the caller then grants nothing)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _role_ids(items: list[object]) -> tuple[str, ...]:
    return tuple(sys.intern(r) for r in items if isinstance(r, str))


_role_lists = Memo(_role_ids)
_grants = Memo(compile_grants)


def parse_cost(raw: bytes) -> Number | None:
    """A cost as stored (JSON number text); None (with a warning) for anything else."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        logger.warning("ignoring a malformed credit cost %r", raw[:40])
        return None
    return value


def parse_role_ids(raw: bytes | None) -> tuple[str, ...] | None:
    """A user's role ids (interned); None when the user has no role list."""
    return _role_lists(raw) if raw is not None else None


def parse_status(raw: bytes | None) -> str | None:
    return sys.intern(raw.decode()) if raw is not None else None


def parse_grants(raw: bytes | None) -> Grants | None:
    """A role's compiled grants (compiling costs ~5 µs); None for a role not stored."""
    return _grants(raw) if raw is not None else None


def parse_number(text: bytes | str) -> Number:
    """A stored decimal ("150", "147.5") as an int when integral, else a float."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value
