"""What each event type's ``data`` must hold, the stream it belongs to, and the bounds on values.

One validator per event type; each raises ``InvalidEvent`` with a reason (without the event
type: ``parse_envelope`` prefixes it). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crmcache.errors import InvalidEvent

if TYPE_CHECKING:
    from config.settings import Settings

MAX_ID_LENGTH = 256
MAX_LIST_LENGTH = 10_000
MAX_EVENT_BYTES = 64 * 1024
MAX_EVENT_DEPTH = 32
MAX_CREDIT_VALUE = 10**12


@dataclass(frozen=True)
class EventLimits:
    """How big an event may be: payload bytes, JSON nesting, and the largest credit value.

    A credit value (a cost, a top-up's delta, a balance) is at most ``max_credit_value`` either
    side of 0: 10**12 by default, far above any real cost or balance and far below 2**53, so
    sums of such values stay exact in the doubles Redis and Lua compute with.
    """

    max_bytes: int = MAX_EVENT_BYTES
    max_depth: int = MAX_EVENT_DEPTH
    max_credit_value: int = MAX_CREDIT_VALUE

    @classmethod
    def of(cls, settings: Settings) -> EventLimits:
        """The limits configured by CRM_MAX_EVENT_BYTES, CRM_MAX_EVENT_DEPTH and
        CRM_MAX_CREDIT_VALUE."""
        return cls(settings.max_event_bytes, settings.max_event_depth, settings.max_credit_value)


STREAM_OF = {
    "credit-config-changed": "credit-configs",
    "credit-config-deleted": "credit-configs",
    "role-changed": "roles",
    "role-deleted": "roles",
    "user-changed": "users",
    "user-deleted": "users",
    "user-credits-changed": "users",
    "hierarchy-changed": "hierarchy",
    "config-changed": "configs",
    "config-deleted": "configs",
}
"""The one stream each event type may arrive on: a Redis ACL channel rule that lets a publisher
write only ``crm:*:hierarchy`` then also stops it from granting permissions."""


def require_stream(event_type: str, stream: str, tenant: str) -> None:
    """Refuse an event published on another stream's channel than its type's."""
    expected = STREAM_OF[event_type]
    if stream != expected:
        raise InvalidEvent(
            f"{event_type} belongs on the {expected} stream, not on {stream}", tenant
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    if _is_int(value):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def _require_id(data: Mapping[str, Any], name: str) -> None:
    if name not in data:
        raise InvalidEvent(f"{name} is missing")
    if not _is_id(data[name]):
        raise InvalidEvent(
            f"{name} must be a non-empty printable string of at most "
            f"{MAX_ID_LENGTH} characters, or an integer"
        )


def _require_id_list(data: Mapping[str, Any], name: str, *, required: bool) -> None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"{name} is missing")
        return
    if not isinstance(value, list) or len(value) > MAX_LIST_LENGTH:
        raise InvalidEvent(f"{name} must be a list of at most {MAX_LIST_LENGTH} ids")
    if not all(_is_id(item) for item in value):
        raise InvalidEvent(f"{name} must hold only ids")


def optional_id(envelope: Mapping[str, Any], name: str) -> str | None:
    """An envelope id as stored (integers as their decimal text), or None when absent."""
    value = _optional(envelope, name, _is_id, "a non-empty string or an integer")
    return None if value is None else str(value)


def optional_count(envelope: Mapping[str, Any], name: str) -> int | None:
    value = _optional(envelope, name, _is_count, "a non-negative integer below 2**53")
    return None if value is None else int(value)


def optional_timestamp(envelope: Mapping[str, Any], name: str) -> str | None:
    value: str | None = _optional(
        envelope, name, lambda v: isinstance(v, str), "an ISO-8601 string"
    )
    if value is not None:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"{name} {value[:40]!r} is not ISO-8601") from None
    return value


def _optional(
    envelope: Mapping[str, Any], name: str, valid: Callable[[Any], bool], expected: str
) -> Any:
    """The envelope's ``name``, None when absent; InvalidEvent when present but not ``valid``."""
    value = envelope.get(name)
    if value is not None and not valid(value):
        raise InvalidEvent(f"{name} must be {expected}")
    return value


def _is_count(value: Any) -> bool:
    return _is_int(value) and 0 <= value < 2**53


def _require_numbers(
    data: Mapping[str, Any],
    fields: tuple[tuple[str, bool], ...],
    limit: int,
    *,
    non_negative: bool,
) -> None:
    """Each (name, required) field is a JSON number (not a boolean) from -limit (0 if
    `non_negative`) to limit. The comparison also refuses NaN and the infinities (JSON's 1e400
    decodes to inf) without converting a huge integer to a float (which would overflow)."""
    low = 0 if non_negative else -limit
    for name, required in fields:
        value = data.get(name)
        if value is None and not required:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= limit
        ):
            raise InvalidEvent(
                f"{name} must be a number >= {low} and <= {limit} (CRM_MAX_CREDIT_VALUE)"
            )


def _credit_config_changed(data: Mapping[str, Any], limits: EventLimits) -> None:
    _require_id(data, "operationCode")
    fields = (("newValue", True), ("oldValue", False))
    _require_numbers(data, fields, limits.max_credit_value, non_negative=True)


def _role_changed(data: Mapping[str, Any], limits: EventLimits) -> None:
    _require_id(data, "roleId")
    name = data.get("roleName")
    if name is not None and not isinstance(name, str):
        raise InvalidEvent("roleName must be a string")
    perms = data.get("permissions")
    if not isinstance(perms, list) or len(perms) > MAX_LIST_LENGTH:
        raise InvalidEvent(f"permissions must be a list of at most {MAX_LIST_LENGTH} strings")
    if not all(isinstance(p, str) and 0 < len(p) <= MAX_ID_LENGTH for p in perms):
        raise InvalidEvent("permissions must hold only non-empty strings")


def _user_changed(data: Mapping[str, Any], limits: EventLimits) -> None:
    _require_id(data, "userId")
    status = data.get("status")
    if status is not None and (not isinstance(status, str) or not 0 < len(status) <= 64):
        raise InvalidEvent("status must be a non-empty string of at most 64 characters")
    _require_id_list(data, "roles", required=False)


def _hierarchy_changed(data: Mapping[str, Any], limits: EventLimits) -> None:
    _require_id(data, "entityId")
    _require_id_list(data, "affectedEntityIds", required=False)


def _config_changed(data: Mapping[str, Any], limits: EventLimits) -> None:
    _require_id(data, "configId")
    if "config" not in data:
        raise InvalidEvent("config is missing")


def _user_credits_changed(data: Mapping[str, Any], limits: EventLimits) -> None:
    _require_id(data, "userId")
    fields = (("delta", True), ("available", False))
    _require_numbers(data, fields, limits.max_credit_value, non_negative=False)


Validator = Callable[[Mapping[str, Any], EventLimits], None]


def _requires(name: str) -> Validator:
    return lambda data, limits: _require_id(data, name)


VALIDATORS: dict[str, Validator] = {
    "credit-config-changed": _credit_config_changed,
    "credit-config-deleted": _requires("operationCode"),
    "role-changed": _role_changed,
    "role-deleted": _requires("roleId"),
    "user-changed": _user_changed,
    "user-deleted": _requires("userId"),
    "hierarchy-changed": _hierarchy_changed,
    "config-changed": _config_changed,
    "config-deleted": _requires("configId"),
    "user-credits-changed": _user_credits_changed,
}
