"""The event contract: parsing, validation reasons, and the writes events plan."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmcache.errors import InvalidEvent
from crmcache.event_validation import STREAM_OF
from crmcache.events import EVENT_TYPES, parse_message, plan_writes
from crmcache.keyspace import DataClass, RefKind

MINIMAL = {
    "credit-config-changed": {"operationCode": "crm.leads.create", "newValue": 5},
    "credit-config-deleted": {"operationCode": "crm.leads.create"},
    "role-changed": {"roleId": "sales", "roleName": "Sales", "permissions": ["crm.leads.*"]},
    "role-deleted": {"roleId": "sales"},
    "user-changed": {"userId": "u1", "status": "active", "roles": ["sales"]},
    "user-deleted": {"userId": "u1"},
    "hierarchy-changed": {"entityId": "e1", "affectedEntityIds": ["e2"]},
    "config-changed": {"configId": "c1", "config": {"flag": True}},
    "config-deleted": {"configId": "c1"},
    "user-credits-changed": {"userId": "u1", "available": 150, "delta": 50},
}


def payload(event_type: str, data: Any, **envelope: Any) -> str:
    return json.dumps({"eventType": event_type, "data": data, **envelope})


def test_every_event_type_has_an_example() -> None:
    assert set(MINIMAL) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(MINIMAL))
def test_seed_minimal_form_is_accepted(event_type: str) -> None:
    channel = f"crm:acme:{STREAM_OF[event_type]}"
    event = parse_message(channel, payload(event_type, MINIMAL[event_type]))
    assert (event.tenant, event.event_type, event.event_id) == ("acme", event_type, None)


def test_full_envelope_fields_are_read() -> None:
    event = parse_message(
        "crm:acme:roles",
        payload(
            "role-deleted",
            {"roleId": "r"},
            eventId="e-1",
            tenantId="acme",
            version=7,
            seq=42,
            occurredAt="2026-11-26T10:00:00Z",
        ),
    )
    assert (event.event_id, event.version, event.upstream_seq) == ("e-1", 7, 42)
    assert event.occurred_at == "2026-11-26T10:00:00Z"


@pytest.mark.parametrize(
    ("channel", "raw", "reason"),
    [
        ("crm:acme:users", "{not json", "invalid JSON"),
        ("crm:acme:users", "[1, 2]", "not an object"),
        ("crm:acme:users", '"text"', "not an object"),
        ("crm:acme:users", payload("nope", {}), "unknown eventType"),
        ("crm:acme:users", json.dumps({"data": {}}), "eventType missing"),
        ("crm:acme:users", payload("user-changed", []), "data missing or not an object"),
        ("crm:acme:users", payload("user-changed", {"status": "active"}), "userId is missing"),
        ("crm:acme:users", payload("user-changed", {"userId": ""}), "userId must be"),
        (
            "crm:acme:credit-configs",
            payload("credit-config-changed", {"operationCode": "x", "newValue": "5"}),
            "newValue must be a number >= 0",
        ),
        (
            "crm:acme:credit-configs",
            payload("credit-config-changed", {"operationCode": "x", "newValue": -1}),
            "newValue must be a number >= 0",
        ),
        (
            "crm:acme:credit-configs",
            payload("credit-config-changed", {"operationCode": "x", "newValue": True}),
            "newValue must be a number >= 0",
        ),
        ("crm:acme:roles", payload("role-changed", {"roleId": "r"}), "permissions must be"),
        (
            "crm:acme:roles",
            payload("role-changed", {"roleId": "r", "permissions": [1]}),
            "permissions must hold only",
        ),
        (
            "crm:acme:users",
            payload("user-deleted", {"userId": "u"}, tenantId="globex"),
            "does not match channel",
        ),
        ("crm:acme:users", payload("user-deleted", {"userId": "u"}, version=-1), "version"),
        ("crm:acme:users", payload("user-deleted", {"userId": "u"}, occurredAt="x"), "ISO-8601"),
        ("crm:a:b:users", payload("user-deleted", {"userId": "u"}), "invalid tenant id"),
        ("crm:*:users", payload("user-deleted", {"userId": "u"}), "invalid tenant id"),
        ("crm:{x}:users", payload("user-deleted", {"userId": "u"}), "invalid tenant id"),
        ("crm:../x:users", payload("user-deleted", {"userId": "u"}), "invalid tenant id"),
        ("crm::users", payload("user-deleted", {"userId": "u"}), "invalid tenant id"),
        ("crm:acme:other", payload("user-deleted", {"userId": "u"}), "unknown stream"),
        ("crm:acme:users", '{"eventType": NaN}', "invalid JSON"),
        ("crm:acme:users", b"\xff\xfe", "invalid JSON"),
        ("crm:acme:users", "x" * (64 * 1024 + 1), "exceeds the 65536-byte limit"),
    ],
)
def test_invalid_messages_are_rejected_with_a_reason(
    channel: str, raw: str | bytes, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_message(channel, raw)
    assert reason in caught.value.reason


def test_cost_of_zero_plans_a_write_of_zero() -> None:
    event = parse_message(
        "crm:acme:credit-configs",
        payload("credit-config-changed", MINIMAL["credit-config-changed"] | {"newValue": 0}),
    )
    (write,) = plan_writes(event).writes
    assert (write.data_class, write.field, write.value) == (
        DataClass.CREDIT_COSTS,
        "crm.leads.create",
        "0",
    )


def test_user_changed_without_access_fields_only_invalidates_the_profile() -> None:
    event = parse_message("crm:acme:users", payload("user-changed", {"userId": 42}))
    plan = plan_writes(event)
    assert plan.writes == [] and plan.invalidate == [(RefKind.PROFILE, "42")]


def test_hierarchy_change_invalidates_every_affected_entity_once() -> None:
    data = {"entityId": "e1", "affectedEntityIds": ["e2", "e1", "e3"]}
    plan = plan_writes(parse_message("crm:acme:hierarchy", payload("hierarchy-changed", data)))
    assert plan.invalidate == [(RefKind.HIERARCHY, e) for e in ("e1", "e2", "e3")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(
    event_type=st.sampled_from(sorted(MINIMAL)) | st.text(max_size=10),
    data=json_values
    | st.fixed_dictionaries(
        {},
        optional={
            k: json_values
            for k in (
                "operationCode",
                "newValue",
                "roleId",
                "permissions",
                "userId",
                "status",
                "roles",
                "entityId",
                "affectedEntityIds",
                "configId",
                "config",
                "delta",
            )
        },
    ),
    envelope=st.dictionaries(
        st.sampled_from(["eventId", "tenantId", "version", "seq", "occurredAt"]), json_values
    ),
)
def test_parsing_any_json_either_accepts_or_gives_a_reason(
    event_type: str, data: Any, envelope: dict[str, Any]
) -> None:
    raw = payload(event_type, data, **envelope)
    try:
        event = parse_message("crm:acme:users", raw)
    except InvalidEvent as exc:
        assert exc.reason and exc.tenant == "acme"
        return
    # An accepted event always plans cleanly: non-empty fields, JSON values (status is text)
    for write in plan_writes(event).writes:
        assert isinstance(write.field, str) and write.field
        if write.value is not None and write.data_class is not DataClass.USER_STATUS:
            json.loads(write.value)


@given(raw=st.binary(max_size=200))
def test_parsing_arbitrary_bytes_never_crashes(raw: bytes) -> None:
    try:
        parse_message("crm:acme:users", raw)
    except InvalidEvent as exc:
        assert exc.reason
