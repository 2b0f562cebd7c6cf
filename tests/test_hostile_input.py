"""Hostile input to the event contract: whatever a publisher sends, parsing either accepts it or
refuses it with a reason (InvalidEvent), and never raises anything else."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from config.settings import ConfigError, load_settings
from crmcache.errors import InvalidEvent, InvalidTenant
from crmcache.event_validation import MAX_CREDIT_VALUE, STREAM_OF, VALIDATORS, EventLimits
from crmcache.events import Event, parse_message, plan_writes
from crmcache.json_bounds import exceeds_depth, tree_exceeds_depth
from crmcache.keyspace import STREAMS, TenantKeys
from crmcache.tenancy import is_valid_tenant, validate_tenant
from tests.test_events import MINIMAL

BOMB = "[" * 3000 + "]" * 3000
HUGE_COST = (
    '{"eventType":"credit-config-changed","data":{"operationCode":"x","newValue":1'
    + "0" * 400
    + "}}"
)


def text_of(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def obj(pairs: dict[str, str]) -> str:
    """A JSON object from already-encoded member values."""
    return "{" + ",".join(f"{text_of(k)}:{v}" for k, v in pairs.items()) + "}"


def nest(depth: int, in_object: bool, inner: str) -> str:
    if in_object:
        return '{"k":' * depth + inner + "}" * depth
    return "[" * depth + inner + "]" * depth


# JSON text (not values: json.dumps itself recurses and cannot write a 3,000-deep document).
scalar_text = st.one_of(
    st.none().map(text_of),
    st.booleans().map(text_of),
    st.integers().map(text_of),
    st.integers(min_value=-(10**400), max_value=10**400).map(text_of),
    st.floats(allow_nan=False, allow_infinity=False).map(text_of),
    st.sampled_from(["1e308", "-1e308", "1e400", "-1e400", "-0.0", "0", str(MAX_CREDIT_VALUE)]),
    st.text(max_size=12).map(text_of),
    st.text(alphabet='[]{}"\\', max_size=12).map(text_of),
    st.integers(0, 70_000).map(lambda n: text_of("x" * n)),
)
json_text = st.recursive(
    scalar_text,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.dictionaries(st.text(max_size=6), inner, max_size=4).map(obj)
        | st.builds(nest, st.integers(1, 3000), st.booleans(), inner)
    ),
    max_leaves=8,
)


ENVELOPE = {
    "eventId": "e-1",
    "tenantId": "acme",
    "version": 3,
    "seq": 9,
    "occurredAt": "2026-11-26T10:00:00Z",
}


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, str]:
    """(stream, message): an event of every type, each field and envelope member valid or
    anything at all, sent on any stream."""
    event_type = draw(st.sampled_from(sorted(MINIMAL)))
    data = {k: draw(st.just(text_of(v)) | json_text) for k, v in MINIMAL[event_type].items()}
    data |= draw(st.dictionaries(st.text(max_size=12), json_text, max_size=2))
    members = {
        "eventType": draw(st.just(text_of(event_type)) | json_text),
        "data": draw(st.just(obj(data)) | json_text),
    }
    for name, valid in ENVELOPE.items():
        if draw(st.booleans()):
            members[name] = draw(st.just(text_of(valid)) | json_text)
    stream = draw(st.just(STREAM_OF[event_type]) | st.sampled_from(STREAMS))
    return stream, obj(members)


def parses_or_gives_a_reason(channel: str, raw: str | bytes) -> Event | None:
    try:
        event = parse_message(channel, raw)
    except InvalidEvent as exc:
        # Refused by a rule of the contract, not by an accident caught on the way out.
        assert exc.reason and not exc.reason.startswith("unexpected"), exc.reason
        return None
    # An accepted event plans cleanly, and the worker's re-validation of it agrees (a task
    # carries the envelope's seq, for the upstream-seq watermark, but not occurredAt: only the
    # subscriber uses it).
    plan_writes(event)
    body = json.loads(json.dumps(event.to_task()))
    assert Event.from_task(event.tenant, body) == replace(event, occurred_at=None)
    return event


@settings(max_examples=300, deadline=None)
@given(document=documents())
@example(document=("users", BOMB))
@example(document=("credit-configs", HUGE_COST))
@example(document=("configs", obj({"eventType": '"config-changed"', "data": nest(999, True, "1")})))
def test_any_json_document_is_accepted_or_refused_with_a_reason(document: tuple[str, str]) -> None:
    stream, raw = document
    event = parses_or_gives_a_reason(f"crm:acme:{stream}", raw)
    if event is not None:
        assert STREAM_OF[event.event_type] == stream


bracket_soup = st.lists(
    st.tuples(
        st.sampled_from(["[", "]", "{", "}", '"', "\\", ",", ":", "1", '"a":']),
        st.integers(1, 1500),
    ),
    max_size=12,
).map(lambda runs: "".join(token * count for token, count in runs))


@settings(max_examples=300, deadline=None)
@given(
    raw=st.binary(max_size=300) | bracket_soup.map(str.encode),
    prefix=st.sampled_from(
        [b"", b'{"eventType":"config-changed","data":{"configId":"c","config":']
    ),
)
def test_arbitrary_bytes_are_accepted_or_refused_with_a_reason(raw: bytes, prefix: bytes) -> None:
    parses_or_gives_a_reason("crm:acme:configs", prefix + raw)


def test_a_nesting_bomb_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_message("crm:acme:users", BOMB.encode())
    assert caught.value.reason == "nested deeper than 32"


@pytest.mark.parametrize(("depth", "refused"), [(32, False), (33, True)])
def test_nesting_up_to_the_limit_is_accepted(depth: int, refused: bool) -> None:
    # The envelope is level 1, data level 2, and the config's arrays the rest.
    config = nest(depth - 2, False, "")
    raw = '{"eventType":"config-changed","data":{"configId":"c","config":' + config + "}}"
    if refused:
        with pytest.raises(InvalidEvent, match="nested deeper than 32"):
            parse_message("crm:acme:configs", raw)
    else:
        assert parse_message("crm:acme:configs", raw).event_type == "config-changed"


def depth_of(value: Any) -> int:
    """The reference: how deep lists and dicts nest (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


shallow_json_text = st.recursive(
    scalar_text.filter(lambda text: len(text) < 100),
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=6), inner, max_size=4).map(obj)
        | st.builds(nest, st.integers(1, 40), st.booleans(), inner)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(text=shallow_json_text, limit=st.integers(1, 60))
def test_the_depth_checks_agree_with_the_depth_of_the_decoded_document(
    text: str, limit: int
) -> None:
    value = json.loads(text)
    deeper = depth_of(value) > limit
    assert exceeds_depth(text, limit) is deeper
    assert tree_exceeds_depth(value, limit) is deeper


@pytest.mark.parametrize(
    ("event_type", "stream"),
    [(t, s) for t in sorted(STREAM_OF) for s in STREAMS if s != STREAM_OF[t]],
)
def test_an_event_on_another_streams_channel_is_refused_naming_both(
    event_type: str, stream: str
) -> None:
    raw = text_of({"eventType": event_type, "data": MINIMAL[event_type]})
    with pytest.raises(InvalidEvent) as caught:
        parse_message(f"crm:acme:{stream}", raw)
    expected = STREAM_OF[event_type]
    assert caught.value.reason == f"{event_type} belongs on the {expected} stream, not on {stream}"
    # And a forged task cannot carry it either.
    body = {"s": 1, "c": stream, "t": event_type, "d": MINIMAL[event_type]}
    with pytest.raises(InvalidEvent, match="belongs on the"):
        Event.from_task("acme", body)


def test_a_role_grant_on_the_hierarchy_channel_is_refused() -> None:
    grant = {"eventType": "role-changed", "data": {"roleId": "role-viewer", "permissions": ["*"]}}
    with pytest.raises(InvalidEvent, match="role-changed belongs on the roles stream"):
        parse_message("crm:acme:hierarchy", text_of(grant))
    assert parse_message("crm:acme:roles", text_of(grant)).data["permissions"] == ["*"]


CREDIT_FIELDS = [
    ("credit-config-changed", "newValue"),
    ("credit-config-changed", "oldValue"),
    ("user-credits-changed", "delta"),
    ("user-credits-changed", "available"),
]


@pytest.mark.parametrize(("event_type", "name"), CREDIT_FIELDS)
@pytest.mark.parametrize(
    "raw_value", ["1e308", "-1e308", "1e400", "1" + "0" * 400, str(MAX_CREDIT_VALUE + 1)]
)
def test_a_credit_value_beyond_the_maximum_is_refused(
    event_type: str, name: str, raw_value: str
) -> None:
    data = {**MINIMAL[event_type], name: 0}
    raw = text_of({"eventType": event_type, "data": data}).replace(
        f'"{name}":0', f'"{name}":{raw_value}'
    )
    with pytest.raises(InvalidEvent) as caught:
        parse_message(f"crm:acme:{STREAM_OF[event_type]}", raw)
    assert caught.value.reason.startswith(f"{event_type}: {name} must be a number >= ")
    assert "CRM_MAX_CREDIT_VALUE" in caught.value.reason


@pytest.mark.parametrize(("event_type", "name"), CREDIT_FIELDS)
def test_the_maximum_credit_value_is_accepted_and_configurable(event_type: str, name: str) -> None:
    channel = f"crm:acme:{STREAM_OF[event_type]}"
    at_most = text_of({"eventType": event_type, "data": {**MINIMAL[event_type], name: 10**12}})
    assert parse_message(channel, at_most).data[name] == 10**12
    with pytest.raises(InvalidEvent, match=f"{name} must be a number"):
        parse_message(channel, at_most, EventLimits(max_credit_value=1000))
    assert load_settings(CRM_MAX_CREDIT_VALUE="1000").max_credit_value == 1000


@pytest.mark.parametrize("claimed", ["", 0, False, [], {}], ids=repr)
def test_a_falsy_tenant_id_on_another_tenants_channel_is_refused(claimed: object) -> None:
    raw = text_of({"eventType": "user-deleted", "data": {"userId": "u"}, "tenantId": claimed})
    with pytest.raises(InvalidEvent, match="does not match channel"):
        parse_message("crm:acme:users", raw)


@pytest.mark.parametrize("tenant", ["acme*", "ac*me", "*acme", "*", "ac?me", "ac[m]e"])
def test_a_glob_character_anywhere_in_a_tenant_id_is_refused(tenant: str) -> None:
    # A tenant id lands in channel names and PSUBSCRIBE patterns, where * ? [ ] are globs.
    assert not is_valid_tenant(tenant)
    with pytest.raises(InvalidTenant):
        validate_tenant(tenant)
    with pytest.raises(InvalidTenant):
        TenantKeys.of(tenant)
    raw = text_of({"eventType": "user-deleted", "data": {"userId": "u"}})
    with pytest.raises(InvalidEvent, match="invalid tenant id"):
        parse_message(f"crm:{tenant}:users", raw)
    with pytest.raises(ConfigError, match="CRM_TENANTS"):
        load_settings(CRM_TENANTS=f"globex,{tenant}")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not an object", "task event is not an object"),
        ({"s": 1, "c": "nope", "t": "role-deleted", "d": {"roleId": "r"}}, "valid stream"),
        (
            {"s": 1, "c": "configs", "t": "config-changed", "d": {"configId": "c", "config": [[]]}},
            "",
        ),
        (
            {
                "s": 1,
                "c": "configs",
                "t": "config-changed",
                "d": {"configId": "c", "config": json.loads(nest(31, False, ""))},
            },
            "nested deeper than 32",
        ),
        (
            {
                "s": 1,
                "c": "credit-configs",
                "t": "credit-config-changed",
                "d": {"operationCode": "x", "newValue": 10**400},
            },
            "newValue must be a number",
        ),
        ({"s": -1, "c": "roles", "t": "role-deleted", "d": {"roleId": "r"}}, "valid stamp"),
    ],
)
def test_a_forged_task_event_is_refused_with_a_reason(body: Any, reason: str) -> None:
    if not reason:
        assert Event.from_task("acme", body).seq == 1
        return
    with pytest.raises(InvalidEvent, match=reason):
        Event.from_task("acme", body)


def test_a_bug_while_validating_is_that_messages_invalid_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a validator with a bug (the one fault here that real input cannot produce)
    def broken(data: Any, limits: EventLimits) -> None:
        raise KeyError("oops")

    monkeypatch.setitem(VALIDATORS, "role-deleted", broken)
    # Then parsing and re-validating a task still raise only InvalidEvent, with the cause kept
    raw = text_of({"eventType": "role-deleted", "data": {"roleId": "r"}})
    with pytest.raises(InvalidEvent) as caught:
        parse_message("crm:acme:roles", raw)
    assert caught.value.reason == "unexpected KeyError while parsing: 'oops'"
    assert caught.value.tenant == "acme" and isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(InvalidEvent, match="unexpected KeyError while validating a task event"):
        Event.from_task("acme", {"s": 1, "c": "roles", "t": "role-deleted", "d": {"roleId": "r"}})


def test_every_event_the_sandbox_publishes_is_accepted_on_its_channel() -> None:
    from sandbox.publisher import EventPublisher, channel
    from sandbox.state import SandboxState

    state, publisher = SandboxState(), EventPublisher(None)
    changes = [
        state.set_credit_cost("acme", "op-x", 3),
        state.delete_credit_cost("acme", "op-x"),
        state.set_role("acme", "r-x", ["crm.leads.*"]),
        state.delete_role("acme", "r-x"),
        state.set_user("acme", "u-x", status="active", roles=["r-x"]),
        state.top_up_credits("acme", "u-x", 5),
        state.delete_user("acme", "u-x"),
        state.set_hierarchy("acme", "e-x", {"name": "x"}, ["e-y"]),
        state.delete_hierarchy("acme", "e-x"),
    ]
    accepted = {
        parse_message(channel(c.tenant, c.stream), text_of(publisher.stamp(c))).event_type
        for c in changes
    }
    # Every type but the configs', which the sandbox has none of
    assert accepted == set(STREAM_OF) - {"config-changed", "config-deleted"}
