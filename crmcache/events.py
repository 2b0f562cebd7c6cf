"""The event contract: parse a pub/sub message, and plan the writes it causes.

Pure functions, no I/O. ``parse_message`` turns a raw message into an ``Event`` or raises
``InvalidEvent`` with a reason for the dead-letter store, and nothing else: whatever goes wrong
with one message is that message's failure. ``plan_writes`` turns an event into field writes
and reference invalidations for the store. What each type's data must hold lives in
``event_validation``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.tenancy import is_valid_tenant
from crmcache.errors import InvalidEvent
from crmcache.event_validation import (
    VALIDATORS,
    EventLimits,
    optional_count,
    optional_id,
    optional_timestamp,
    require_stream,
)
from crmcache.json_bounds import exceeds_depth, tree_exceeds_depth
from crmcache.keyspace import STREAMS, DataClass, RefKind, parse_input_channel

DEFAULT_LIMITS = EventLimits()


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
    upstream_prev: int | None = None
    """The upstream seq the subscriber saw last on this stream before this event (None: none
    seen since it started): what apply_events.lua needs to advance ``upstream-seq:<stream>``."""

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
        if self.upstream_seq is not None:
            body["u"] = self.upstream_seq
            if self.upstream_prev is not None:
                body["p"] = self.upstream_prev
        return body

    @classmethod
    def from_task(
        cls, tenant: str, body: Mapping[str, Any], limits: EventLimits = DEFAULT_LIMITS
    ) -> Event:
        """Rebuild an event from ``to_task``'s form, checking it again (tasks can be forged).
        Raises InvalidEvent and nothing else, like ``parse_message``."""
        try:
            return _event_from_task(tenant, body, limits)
        except InvalidEvent:
            raise
        except Exception as exc:
            raise InvalidEvent(unexpected("validating a task event", exc), tenant) from exc


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


def parse_message(
    channel: str, payload: bytes | str, limits: EventLimits = DEFAULT_LIMITS
) -> Event:
    """Validate one pub/sub message against the contract; raise InvalidEvent with a reason.

    Any other exception while decoding or validating (a limit of Python's, a bug of ours)
    becomes this message's InvalidEvent too, with the exception as its ``__cause__``.
    """
    try:
        tenant, stream = parse_input_channel(channel)
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from None
    if not is_valid_tenant(tenant):
        raise InvalidEvent(f"invalid tenant id {tenant[:80]!r} in channel")
    if stream not in STREAMS:
        raise InvalidEvent(f"unknown stream {stream[:80]!r}", tenant)
    try:
        event = parse_envelope(tenant, stream, _decode(tenant, payload, limits), limits)
        require_stream(event.event_type, stream, tenant)
    except InvalidEvent:
        raise
    except Exception as exc:
        raise InvalidEvent(unexpected("parsing", exc), tenant) from exc
    return event


def _decode(tenant: str, payload: bytes | str, limits: EventLimits) -> object:
    """The decoded JSON payload, within the size and nesting limits (checked before decoding:
    the decoder recurses once per level, so a deep document would raise RecursionError)."""
    size = len(payload)
    if size > limits.max_bytes:
        raise InvalidEvent(
            f"payload of {size} bytes exceeds the {limits.max_bytes}-byte limit", tenant
        )
    try:
        text = payload.decode() if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"invalid JSON: {exc}", tenant) from None
    if exceeds_depth(text, limits.max_depth):
        raise InvalidEvent(f"nested deeper than {limits.max_depth}", tenant)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidEvent(f"invalid JSON: {exc}", tenant) from None


def _event_from_task(tenant: str, body: Mapping[str, Any], limits: EventLimits) -> Event:
    if not isinstance(body, Mapping):
        raise InvalidEvent("task event is not an object", tenant)
    stream = body.get("c")
    if stream not in STREAMS:
        raise InvalidEvent("task event without a valid stream", tenant)
    # The task's body is the message's envelope: its data sits one level below it.
    if tree_exceeds_depth(body.get("d"), limits.max_depth - 1):
        raise InvalidEvent(f"nested deeper than {limits.max_depth}", tenant)
    envelope = {"eventType": body.get("t"), "data": body.get("d")}
    if "id" in body:
        envelope["eventId"] = body["id"]
    if "v" in body:
        envelope["version"] = body["v"]
    if "u" in body:
        envelope["seq"] = body["u"]
    event = parse_envelope(tenant, str(stream), envelope, limits)
    require_stream(event.event_type, event.stream, tenant)
    seq = body.get("s")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidEvent("task event without a valid stamp", tenant)
    prev = optional_count(body, "p") if event.upstream_seq is not None else None
    return Event(**{**event.__dict__, "seq": seq, "upstream_prev": prev})


def parse_envelope(
    tenant: str, stream: str, envelope: object, limits: EventLimits = DEFAULT_LIMITS
) -> Event:
    """Validate a decoded message body for `tenant` (taken from the channel). Whether its type
    belongs on `stream` is checked by ``parse_message`` and ``Event.from_task``, not here: a
    snapshot item (crmcache/preload.py) comes from no channel."""
    if not isinstance(envelope, dict):
        raise InvalidEvent(f"payload is a JSON {type(envelope).__name__}, not an object", tenant)
    event_type = envelope.get("eventType")
    if not isinstance(event_type, str):
        raise InvalidEvent("eventType missing or not a string", tenant)
    validator = VALIDATORS.get(event_type)
    if validator is None:
        raise InvalidEvent(f"unknown eventType {event_type[:80]!r}", tenant)
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(f"{event_type}: data missing or not an object", tenant)
    claimed = envelope.get("tenantId")
    if claimed is not None and claimed != tenant:
        raise InvalidEvent(f"tenantId {str(claimed)[:80]!r} does not match channel", tenant)
    try:
        validator(data, limits)
        event_id = optional_id(envelope, "eventId")
        version = optional_count(envelope, "version")
        upstream_seq = optional_count(envelope, "seq")
        occurred_at = optional_timestamp(envelope, "occurredAt")
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


REVOKING_TYPES = frozenset({"user-deleted", "role-changed", "role-deleted"})


def may_revoke(event: Event) -> bool:
    """Whether the event can take access away (a user suspended or deleted, a role changed or
    deleted): the subscriber sends such events at once, on the interactive lane, even for a
    tenant in the middle of a flood (consumer/ingest/batcher.py)."""
    if event.event_type in REVOKING_TYPES:
        return True
    if event.event_type == "user-changed":
        status = event.data.get("status")
        return "roles" in event.data or (status is not None and status != "active")
    return False


def plan_writes(event: Event) -> WritePlan:
    """The field writes and reference invalidations one event causes (the README's event
    contract table)."""
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


# --- helpers ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _id(value: object) -> str:
    """An id as stored: strings as is, integers as their decimal text."""
    return str(value)


def _number(value: object) -> str:
    """A cost as stored: JSON number text ("5", "2.5")."""
    return json.dumps(value)


def unexpected(stage: str, exc: BaseException) -> str:
    """The dead-letter reason for an exception that is not an InvalidEvent (a bug of ours, or
    a limit of Python's): that one message's failure, named by its type."""
    return f"unexpected {type(exc).__name__} while {stage}: {str(exc)[:200]}"


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

EVENT_TYPES = tuple(VALIDATORS)
