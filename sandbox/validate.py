"""Validation of the sandbox's input: ids, numbers, users, consume bodies, page cursors.

Every failure is an ``InvalidInput`` whose message names the field (the server answers it 400).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sandbox.errors import InvalidInput

TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Design §2's tenant id rule (repeated here: the sandbox does not import the product)."""

MAX_ID_LENGTH = 256

Number = int | float


def tenant_name(value: object) -> str:
    if not isinstance(value, str) or not TENANT_ID_RE.fullmatch(value):
        raise InvalidInput(f"invalid tenant id {str(value)[:80]!r}")
    return value


def ident(value: object, what: str) -> str:
    """An id: a non-empty printable string (integers are taken as their decimal text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
        return value
    raise InvalidInput(f"{what} must be a non-empty string of at most {MAX_ID_LENGTH} characters")


def number(value: object, what: str, minimum: float = 0) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number")
    if value < minimum:
        raise InvalidInput(f"{what} must be >= {minimum}")
    return value


def strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{what} must be a list of non-empty strings")
    return list(value)


def records(value: object, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise InvalidInput(f"{what} must be a list of objects")
    return value


def parse_user(raw: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """A user record; with ``partial`` only the fields present are checked and returned."""
    defaults: dict[str, Any] = {"status": "active", "roles": [], "profile": {}, "credits": 0}
    user = dict(raw) if partial else {**defaults, **raw}
    user["userId"] = ident(user.get("userId"), "userId")
    status = user.get("status", "active")
    if not isinstance(status, str) or not 0 < len(status) <= 64:
        raise InvalidInput("status must be a non-empty string of at most 64 characters")
    if "roles" in user:
        user["roles"] = [ident(r, "roles") for r in as_list(user["roles"], "roles")]
    if "profile" in user and not isinstance(user["profile"], Mapping):
        raise InvalidInput("profile must be an object")
    if "profile" in user:
        user["profile"] = json_copy(user["profile"], "profile")
    if "credits" in user:
        user["credits"] = number(user["credits"], "credits")
    return user


def json_copy(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A deep copy that is also proof the value can be served as JSON."""
    try:
        copied: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable: {exc}") from None
    return copied


def as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a list")
    return value


def consume_request(body: object) -> tuple[str, str, Number]:
    if not isinstance(body, Mapping):
        raise InvalidInput("the consume body must be a JSON object")
    missing = [
        name
        for name in ("idempotencyKey", "userId", "operationCode", "amount", "occurredAt")
        if name not in body
    ]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")
    key = ident(body["idempotencyKey"], "idempotencyKey")
    user_id = ident(body["userId"], "userId")
    ident(body["operationCode"], "operationCode")
    amount = number(body["amount"], "amount")
    if not is_iso_timestamp(body["occurredAt"]):
        raise InvalidInput("occurredAt must be an ISO-8601 string")
    return key, user_id, amount


def is_iso_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def encode_cursor(user_id: str) -> str:
    return base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput(f"invalid cursor {cursor[:40]!r}") from None
