"""End to end: PUBLISH on crm:{tenant}:{stream} -> subscriber -> real Celery worker -> cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from crmcache import keyspace
from crmcache.keyspace import DataClass, RefKind, TenantKeys
from tests.conftest import wait_until

TENANT = "e2e"  # not a sandbox tenant: no resync touches it
KEYS = TenantKeys.of(TENANT)


def publish(r: redis.Redis, stream: str, event_type: str, data: Any, **envelope: Any) -> None:
    body = json.dumps({"eventType": event_type, "data": data, **envelope})
    assert r.publish(KEYS.channel(stream), body) == 1, "the subscriber is not listening"


def field(r: redis.Redis, data_class: DataClass, name: str) -> bytes | None:
    return r.hget(KEYS.values(data_class), name)


def visible(
    r: redis.Redis, data_class: DataClass, name: str, value: bytes | None
) -> Callable[[], bool]:
    return lambda: field(r, data_class, name) == value


ENVELOPES: list[dict[str, Any]] = [
    {},
    {
        "eventId": "id-{n}",
        "tenantId": TENANT,
        "version": 1,
        "seq": 1,
        "occurredAt": "2026-11-26T12:00:00+00:00",
    },
]


def envelope(form: int, n: str) -> dict[str, Any]:
    return {k: (v.format(n=n) if isinstance(v, str) else v) for k, v in ENVELOPES[form].items()}


@pytest.mark.parametrize("form", [0, 1], ids=["seed-minimal", "full-envelope"])
def test_credit_config_changed_and_deleted(r: redis.Redis, subscriber: Any, form: int) -> None:
    publish(
        r,
        "credit-configs",
        "credit-config-changed",
        {"operationCode": "crm.leads.create", "newValue": 5},
        **envelope(form, "a"),
    )
    wait_until(visible(r, DataClass.CREDIT_COSTS, "crm.leads.create", b"5"), what="cost 5")
    publish(
        r,
        "credit-configs",
        "credit-config-deleted",
        {"operationCode": "crm.leads.create"},
        **{**envelope(form, "b"), "version": 2},
    )
    wait_until(visible(r, DataClass.CREDIT_COSTS, "crm.leads.create", None), what="deleted")
    assert r.hexists(KEYS.stamps(DataClass.CREDIT_COSTS), "crm.leads.create")  # tombstone


def test_credit_cost_of_zero_is_a_configured_cost(r: redis.Redis, subscriber: Any) -> None:
    publish(
        r,
        "credit-configs",
        "credit-config-changed",
        {"operationCode": "crm.contacts.view", "newValue": 0},
    )
    wait_until(visible(r, DataClass.CREDIT_COSTS, "crm.contacts.view", b"0"), what="cost 0")


@pytest.mark.parametrize("form", [0, 1], ids=["seed-minimal", "full-envelope"])
def test_role_changed_and_deleted(r: redis.Redis, subscriber: Any, form: int) -> None:
    publish(
        r,
        "roles",
        "role-changed",
        {"roleId": "sales", "roleName": "Sales", "permissions": ["crm.leads.*"]},
        **envelope(form, "a"),
    )
    wait_until(visible(r, DataClass.ROLES, "sales", b'["crm.leads.*"]'), what="role")
    publish(
        r, "roles", "role-deleted", {"roleId": "sales"}, **{**envelope(form, "b"), "version": 2}
    )
    wait_until(visible(r, DataClass.ROLES, "sales", None), what="role deleted")


@pytest.mark.parametrize("form", [0, 1], ids=["seed-minimal", "full-envelope"])
def test_user_changed_and_deleted_update_access_and_invalidate_profile(
    r: redis.Redis, subscriber: Any, form: int
) -> None:
    r.set(KEYS.ref(RefKind.PROFILE, "u1"), '{"name": "cached"}')
    publish(
        r,
        "users",
        "user-changed",
        {"userId": "u1", "status": "active", "roles": ["sales"]},
        **envelope(form, "a"),
    )
    wait_until(visible(r, DataClass.USER_ROLES, "u1", b'["sales"]'), what="user roles")
    assert field(r, DataClass.USER_STATUS, "u1") == b"active"
    assert not r.exists(KEYS.ref(RefKind.PROFILE, "u1"))
    r.set(KEYS.ref(RefKind.PROFILE, "u1"), '{"name": "cached again"}')
    publish(r, "users", "user-deleted", {"userId": "u1"}, **{**envelope(form, "b"), "version": 2})
    wait_until(visible(r, DataClass.USER_STATUS, "u1", None), what="user deleted")
    assert field(r, DataClass.USER_ROLES, "u1") is None
    assert not r.exists(KEYS.ref(RefKind.PROFILE, "u1"))


@pytest.mark.parametrize("form", [0, 1], ids=["seed-minimal", "full-envelope"])
def test_hierarchy_changed_invalidates_named_entries(
    r: redis.Redis, subscriber: Any, form: int
) -> None:
    for entity in ("e1", "e2", "e3"):
        r.set(KEYS.ref(RefKind.HIERARCHY, entity), "{}")
    publish(
        r,
        "hierarchy",
        "hierarchy-changed",
        {"entityId": "e1", "affectedEntityIds": ["e2"]},
        **envelope(form, "a"),
    )
    wait_until(
        lambda: not r.exists(KEYS.ref(RefKind.HIERARCHY, "e1"), KEYS.ref(RefKind.HIERARCHY, "e2")),
        what="invalidated",
    )
    assert r.exists(KEYS.ref(RefKind.HIERARCHY, "e3"))


@pytest.mark.parametrize("form", [0, 1], ids=["seed-minimal", "full-envelope"])
def test_config_changed_and_deleted(r: redis.Redis, subscriber: Any, form: int) -> None:
    publish(
        r,
        "configs",
        "config-changed",
        {"configId": "c1", "config": {"a": 1}},
        **envelope(form, "a"),
    )
    wait_until(visible(r, DataClass.CONFIGS, "c1", b'{"a":1}'), what="config")
    publish(
        r, "configs", "config-deleted", {"configId": "c1"}, **{**envelope(form, "b"), "version": 2}
    )
    wait_until(visible(r, DataClass.CONFIGS, "c1", None), what="config deleted")


def test_credit_top_up_is_added_once_to_a_cached_balance(r: redis.Redis, subscriber: Any) -> None:
    r.set(KEYS.balance("u1"), "10")
    for _ in range(2):  # the Wrapper re-publishes the same event
        publish(
            r,
            "users",
            "user-credits-changed",
            {"userId": "u1", "available": 15, "delta": 5},
            eventId="top-up-1",
        )
    wait_until(lambda: r.get(KEYS.balance("u1")) == b"15", what="balance 15")
    publish(r, "credit-configs", "credit-config-changed", {"operationCode": "x", "newValue": 1})
    wait_until(visible(r, DataClass.CREDIT_COSTS, "x", b"1"), what="later event")
    assert r.get(KEYS.balance("u1")) == b"15"


BAD_INPUT = [
    ("crm:e2e:users", "{not json", "invalid JSON"),
    ("crm:e2e:users", "[1]", "not an object"),
    (
        "crm:e2e:credit-configs",
        json.dumps(
            {
                "eventType": "credit-config-changed",
                "data": {"operationCode": "x", "newValue": "five"},
            }
        ),
        "newValue must be a number",
    ),
    ("crm:e2e:users", json.dumps({"eventType": "user-exploded", "data": {}}), "unknown eventType"),
    (
        "crm:e2e:users",
        json.dumps({"eventType": "user-deleted", "tenantId": "globex", "data": {"userId": "u"}}),
        "does not match channel",
    ),
    (
        "crm:a:b:users",
        json.dumps({"eventType": "user-deleted", "data": {"userId": "u"}}),
        "invalid tenant id",
    ),
    (
        "crm:*:users",
        json.dumps({"eventType": "user-deleted", "data": {"userId": "u"}}),
        "invalid tenant id",
    ),
    (
        "crm:{x}:users",
        json.dumps({"eventType": "user-deleted", "data": {"userId": "u"}}),
        "invalid tenant id",
    ),
    (
        "crm:../x:users",
        json.dumps({"eventType": "user-deleted", "data": {"userId": "u"}}),
        "invalid tenant id",
    ),
    ("crm:e2e:users", "x" * (1024 * 1024), "exceeds the 65536-byte limit"),
]


@pytest.mark.parametrize(
    ("channel", "raw", "reason"), BAD_INPUT, ids=[reason for _, _, reason in BAD_INPUT]
)
def test_bad_input_is_dead_lettered_and_the_next_event_still_applies(
    r: redis.Redis, subscriber: Any, channel: str, raw: str, reason: str
) -> None:
    # When a bad message and then a good one are published
    assert r.publish(channel, raw) == 1
    publish(r, "credit-configs", "credit-config-changed", {"operationCode": "ok", "newValue": 2})
    # Then the good one is applied
    wait_until(visible(r, DataClass.CREDIT_COSTS, "ok", b"2"), what="the next good event")
    # And the bad one is in the dead-letter stream, with its reason and raw message, counted
    entries = wait_until(lambda: r.xrange(keyspace.DEAD_LETTERS), what="dead letter")
    ((_, entry),) = entries
    assert reason in entry[b"reason"].decode()
    assert entry[b"channel"].decode() == channel
    assert entry[b"raw"] == raw.encode()
    assert int(entry[b"size"]) == len(raw.encode())
    assert r.get(keyspace.DEAD_LETTER_COUNT) == b"1"
    assert subscriber.subscriber.stats["dead_lettered"] == 1


def test_events_of_one_burst_are_batched_into_few_tasks(r: redis.Redis, subscriber: Any) -> None:
    # Given a burst of 500 events published in one pipeline
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.publish(
            KEYS.channel("credit-configs"),
            json.dumps(
                {
                    "eventType": "credit-config-changed",
                    "data": {"operationCode": f"op{i}", "newValue": i},
                }
            ),
        )
    pipe.execute()
    # Then all are applied, in far fewer tasks than events
    wait_until(lambda: r.hlen(KEYS.values(DataClass.CREDIT_COSTS)) == 500, what="500 costs")
    stats = subscriber.subscriber.stats
    assert stats["published"] == 500
    assert stats["batches"] < 100
