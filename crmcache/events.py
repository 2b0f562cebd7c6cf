"""The event contract (design §2): parse a pub/sub message, and plan the writes it causes.

Pure functions, no I/O. ``parse_message`` turns a raw message into an ``Event`` or raises
``InvalidEvent`` with a reason for the dead-letter store; ``plan_writes`` turns an event into
field writes and reference invalidations for the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.tenancy import is_valid_tenant
from crmcache.errors import InvalidEvent
from crmcache.keyspace import STREAMS, DataClass, RefKind, parse_input_channel

MAX_ID_LENGTH = 256
MAX_LIST_LENGTH = 10_000


@dataclass(frozen=True)
class Event:
    """One valid event from the Wrapper. ``seq`` is the subscriber's receipt stamp (0 = none)."""

    tenant: str
    stream: str
    event_type: str
    data: Mapping[str, Any]
    event_id: str | None = None
    version: int | None = None
    upstream_seq: int | None = None
    occurred_at: str | None = None
    seq: int = 0

    def to_task(self) -> dict[str, Any]:
        """The compact JSON form carried by an apply_events task."""
        body: dict[str, Any] = {
            "s": self.seq,
            "c": self.stream,
            "t": self.event_type,
            "d": dict(self.data),
        }
        if self.event_id is not None:
            body["id"] = self.event_id
        if self.version is not None:
            body["v"] = self.version
        return body

    @classmethod
    def from_task(cls, tenant: str, body: Mapping[str, Any]) -> Event:
        """Rebuild an event from ``to_task``'s form, checking it again (tasks can be forged)."""
        if not isinstance(body, Mapping):
            raise InvalidEvent("task event is not an object", tenant)
        envelope = {"eventType": body.get("t"), "data": body.get("d")}
        if "id" in body:
            envelope["eventId"] = body["id"]
        if "v" in body:
            envelope["version"] = body["v"]
        stream = body.get("c")
        if stream not in STREAMS:
            raise InvalidEvent("task event without a valid stream", tenant)
        event = parse_envelope(tenant, str(stream), envelope)
        seq = body.get("s")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InvalidEvent("task event without a valid stamp", tenant)
        return cls(**{**event.__dict__, "seq": seq})


@dataclass(frozen=True)
class FieldWrite:
    """Set (``value`` is a string) or delete (``value`` is None) one field of a data class."""

    data_class: DataClass
    field: str
    value: str | None


@dataclass(frozen=True)
class WritePlan:
    writes: list[FieldWrite] = field(default_factory=list)
    invalidate: list[tuple[RefKind, str]] = field(default_factory=list)
    credit_deltas: list[tuple[str, str]] = field(default_factory=list)
    """(userId, delta) to add to a cached balance: top-ups are deltas, not stamped values."""


def parse_message(channel: str, payload: bytes | str, max_bytes: int = 64 * 1024) -> Event:
    """Validate one pub/sub message against the contract; raise InvalidEvent with a reason."""
    try:
        tenant, stream = parse_input_channel(channel)
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from None
    if not is_valid_tenant(tenant):
        raise InvalidEvent(f"invalid tenant id {tenant[:80]!r} in channel")
    if stream not in STREAMS:
        raise InvalidEvent(f"unknown stream {stream[:80]!r}", tenant)
    size = len(payload)
    if size > max_bytes:
        raise InvalidEvent(f"payload of {size} bytes exceeds the {max_bytes}-byte limit", tenant)
    try:
        envelope = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"invalid JSON: {exc}", tenant) from None
    return parse_envelope(tenant, stream, envelope)


def parse_envelope(tenant: str, stream: str, envelope: object) -> Event:
    """Validate a decoded message body for `tenant` (taken from the channel)."""
    if not isinstance(envelope, dict):
        raise InvalidEvent(f"payload is a JSON {type(envelope).__name__}, not an object", tenant)
    event_type = envelope.get("eventType")
    if not isinstance(event_type, str):
        raise InvalidEvent("eventType missing or not a string", tenant)
    validator = _VALIDATORS.get(event_type)
    if validator is None:
        raise InvalidEvent(f"unknown eventType {event_type[:80]!r}", tenant)
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(f"{event_type}: data missing or not an object", tenant)
    claimed = envelope.get("tenantId")
    if claimed is not None and claimed != tenant:
        raise InvalidEvent(f"tenantId {str(claimed)[:80]!r} does not match channel", tenant)
    try:
        validator(data)
        event_id = _optional_id(envelope, "eventId")
        version = _optional_count(envelope, "version")
        upstream_seq = _optional_count(envelope, "seq")
        occurred_at = _optional_timestamp(envelope, "occurredAt")
    except InvalidEvent as exc:
        raise InvalidEvent(f"{event_type}: {exc.reason}", tenant) from None
    return Event(
        tenant=tenant,
        stream=stream,
        event_type=event_type,
        data=data,
        event_id=event_id,
        version=version,
        upstream_seq=upstream_seq,
        occurred_at=occurred_at,
    )


def plan_writes(event: Event) -> WritePlan:
    """The field writes and reference invalidations one event causes (design §2's table)."""
    plan = WritePlan()
    _PLANNERS[event.event_type](event.data, plan)
    return plan


def _plan_cost(data: Mapping[str, Any], plan: WritePlan) -> None:
    cost = _number(data["newValue"])
    plan.writes.append(FieldWrite(DataClass.CREDIT_COSTS, _id(data["operationCode"]), cost))


def _plan_role(data: Mapping[str, Any], plan: WritePlan) -> None:
    perms = _compact(data["permissions"])
    plan.writes.append(FieldWrite(DataClass.ROLES, _id(data["roleId"]), perms))


def _deleter(
    data_class: DataClass, id_field: str
) -> Callable[[Mapping[str, Any], WritePlan], None]:
    def plan_delete(data: Mapping[str, Any], plan: WritePlan) -> None:
        plan.writes.append(FieldWrite(data_class, _id(data[id_field]), None))

    return plan_delete


def _plan_user_changed(data: Mapping[str, Any], plan: WritePlan) -> None:
    user = _id(data["userId"])
    if data.get("status") is not None:
        plan.writes.append(FieldWrite(DataClass.USER_STATUS, user, data["status"]))
    if data.get("roles") is not None:
        roles = _compact([_id(r) for r in data["roles"]])
        plan.writes.append(FieldWrite(DataClass.USER_ROLES, user, roles))
    plan.invalidate.append((RefKind.PROFILE, user))


def _plan_user_deleted(data: Mapping[str, Any], plan: WritePlan) -> None:
    user = _id(data["userId"])
    plan.writes.extend(
        [
            FieldWrite(DataClass.USER_STATUS, user, None),
            FieldWrite(DataClass.USER_ROLES, user, None),
        ]
    )
    plan.invalidate.extend([(RefKind.PROFILE, user), (RefKind.CREDITS, user)])


def _plan_hierarchy(data: Mapping[str, Any], plan: WritePlan) -> None:
    entities = [_id(data["entityId"])] + [_id(e) for e in data.get("affectedEntityIds") or []]
    plan.invalidate.extend((RefKind.HIERARCHY, e) for e in dict.fromkeys(entities))


def _plan_config(data: Mapping[str, Any], plan: WritePlan) -> None:
    config = (
        _compact(data["config"]) if "config" in data and data.get("config") is not None else None
    )
    plan.writes.append(FieldWrite(DataClass.CONFIGS, _id(data["configId"]), config))


def _plan_credits(data: Mapping[str, Any], plan: WritePlan) -> None:
    user = _id(data["userId"])
    plan.credit_deltas.append((user, _number(data["delta"])))
    # A balance read through from the Wrapper while this top-up is applied may predate it:
    # dropping the lease stops that fetch from filling the balance (the next read refetches).
    plan.invalidate.append((RefKind.CREDITS, user))


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# --- field validators -------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    if _is_int(value):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def _id(value: object) -> str:
    """An id as stored: strings as is, integers as their decimal text."""
    return str(value)


def _number(value: object) -> str:
    """A cost as stored: JSON number text ("5", "2.5")."""
    return json.dumps(value)


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


def _optional_id(envelope: Mapping[str, Any], name: str) -> str | None:
    value = envelope.get(name)
    if value is None:
        return None
    if not _is_id(value):
        raise InvalidEvent(f"{name} must be a non-empty string or an integer")
    return _id(value)


def _optional_count(envelope: Mapping[str, Any], name: str) -> int | None:
    value = envelope.get(name)
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value < 2**53:
        raise InvalidEvent(f"{name} must be a non-negative integer below 2**53")
    return int(value)


def _optional_timestamp(envelope: Mapping[str, Any], name: str) -> str | None:
    value = envelope.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be an ISO-8601 string")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{name} {value[:40]!r} is not ISO-8601") from None
    return value


def _credit_config_changed(data: Mapping[str, Any]) -> None:
    _require_id(data, "operationCode")
    _require_numbers(data, (("newValue", True), ("oldValue", False)), non_negative=True)


def _require_numbers(
    data: Mapping[str, Any], fields: tuple[tuple[str, bool], ...], *, non_negative: bool
) -> None:
    """Each (name, required) field is a finite JSON number (not a boolean), >= 0 if asked."""
    for name, required in fields:
        value = data.get(name)
        if value is None and not required:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or (non_negative and value < 0)
        ):
            wanted = "a number >= 0" if non_negative else "a finite number"
            raise InvalidEvent(f"{name} must be {wanted}")


def _role_changed(data: Mapping[str, Any]) -> None:
    _require_id(data, "roleId")
    name = data.get("roleName")
    if name is not None and not isinstance(name, str):
        raise InvalidEvent("roleName must be a string")
    perms = data.get("permissions")
    if not isinstance(perms, list) or len(perms) > MAX_LIST_LENGTH:
        raise InvalidEvent(f"permissions must be a list of at most {MAX_LIST_LENGTH} strings")
    if not all(isinstance(p, str) and 0 < len(p) <= MAX_ID_LENGTH for p in perms):
        raise InvalidEvent("permissions must hold only non-empty strings")


def _user_changed(data: Mapping[str, Any]) -> None:
    _require_id(data, "userId")
    status = data.get("status")
    if status is not None and (not isinstance(status, str) or not 0 < len(status) <= 64):
        raise InvalidEvent("status must be a non-empty string of at most 64 characters")
    _require_id_list(data, "roles", required=False)


def _hierarchy_changed(data: Mapping[str, Any]) -> None:
    _require_id(data, "entityId")
    _require_id_list(data, "affectedEntityIds", required=False)


def _config_changed(data: Mapping[str, Any]) -> None:
    _require_id(data, "configId")
    if "config" not in data:
        raise InvalidEvent("config is missing")


def _user_credits_changed(data: Mapping[str, Any]) -> None:
    _require_id(data, "userId")
    _require_numbers(data, (("delta", True), ("available", False)), non_negative=False)


def _requires(name: str) -> Callable[[Mapping[str, Any]], None]:
    return lambda data: _require_id(data, name)


_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], None]] = {
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

_PLANNERS: dict[str, Callable[[Mapping[str, Any], WritePlan], None]] = {
    "credit-config-changed": _plan_cost,
    "credit-config-deleted": _deleter(DataClass.CREDIT_COSTS, "operationCode"),
    "role-changed": _plan_role,
    "role-deleted": _deleter(DataClass.ROLES, "roleId"),
    "user-changed": _plan_user_changed,
    "user-deleted": _plan_user_deleted,
    "hierarchy-changed": _plan_hierarchy,
    "config-changed": _plan_config,
    "config-deleted": _deleter(DataClass.CONFIGS, "configId"),
    "user-credits-changed": _plan_credits,
}

EVENT_TYPES = tuple(_VALIDATORS)
