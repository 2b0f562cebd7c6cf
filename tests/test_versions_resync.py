"""A resync never lowers an entity's version: an event older than what was applied before a
preload is still refused after it (values, deletes, dead-letter replays).

Real Redis, the real preload (``preload_tenant`` against the sandbox Wrapper), events stamped
from the tenant's real receipt counter as the subscriber stamps them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from crmcache.events import Event, parse_envelope
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.preload import preload_tenant
from crmcache.store import ApplyResult, Store
from crmcache.wrapper import WrapperClient
from tests.conftest import wait_until
from tests.test_cli import cli_json

ACME = TenantKeys.of("acme")
USERS_CHANNEL = ACME.channel("users")


@pytest.fixture
def client(settings: Any) -> Iterator[WrapperClient]:
    wrapper_client = WrapperClient(settings)
    yield wrapper_client
    wrapper_client.close()


def stamped(
    store: Store, stream: str, event_type: str, data: dict[str, Any], **envelope: Any
) -> Event:
    """One event stamped from the tenant's receipt counter, as the subscriber stamps it."""
    event = parse_envelope("acme", stream, {"eventType": event_type, "data": data, **envelope})
    return replace(event, seq=store.reserve_stamps({"acme": 1})["acme"])


def receive(
    store: Store, stream: str, event_type: str, data: dict[str, Any], **envelope: Any
) -> ApplyResult:
    """Stamp one event and apply it at once."""
    return store.apply_events("acme", [stamped(store, stream, event_type, data, **envelope)])


def sales_role(store: Store, version: int, permissions: list[str]) -> Event:
    """role-changed of role sales at `version`, stamped now."""
    data = {"roleId": "sales", "permissions": permissions}
    return stamped(store, "roles", "role-changed", data, version=version)


def field(r: redis.Redis, data_class: DataClass, name: str) -> str | None:
    value = r.hget(ACME.values(data_class), name)
    return value.decode() if value is not None else None


def test_a_late_older_version_is_refused_after_a_preload(
    r: redis.Redis, store: Store, wrapper: Any, client: WrapperClient
) -> None:
    # Given user-456 suspended and role sales narrowed, both at version 10, applied from their
    # events (the Wrapper holds the same)
    wrapper.set_user("acme", "user-456", status="suspended", publish=False)
    wrapper.set_role("acme", "sales", ["crm.contacts.view"], publish=False)
    receive(
        store, "users", "user-changed", {"userId": "user-456", "status": "suspended"}, version=10
    )
    receive(
        store,
        "roles",
        "role-changed",
        {"roleId": "sales", "permissions": ["crm.contacts.view"]},
        version=10,
    )
    # And a resync of the tenant
    preload_tenant(store, client, "acme")
    # When version 5 of both arrives late (received after the resync)
    user = receive(
        store, "users", "user-changed", {"userId": "user-456", "status": "active"}, version=5
    )
    role = receive(
        store, "roles", "role-changed", {"roleId": "sales", "permissions": ["*"]}, version=5
    )
    # Then both are refused: the user stays suspended, the role keeps its narrow permissions
    assert (user.written, role.written) == (0, 0)
    assert field(r, DataClass.USER_STATUS, "user-456") == "suspended"
    assert field(r, DataClass.ROLES, "sales") == '["crm.contacts.view"]'


def test_a_user_deleted_before_a_preload_does_not_come_back_from_a_late_older_change(
    r: redis.Redis, store: Store, wrapper: Any, client: WrapperClient
) -> None:
    # Given user-456 deleted at version 10 (at the Wrapper and in the cache), then a resync
    wrapper.delete_user("acme", "user-456", publish=False)
    receive(store, "users", "user-deleted", {"userId": "user-456"}, version=10)
    preload_tenant(store, client, "acme")
    # When a user-changed of version 5 arrives late
    result = receive(
        store,
        "users",
        "user-changed",
        {"userId": "user-456", "status": "active", "roles": ["admin"]},
        version=5,
    )
    # Then the user stays deleted
    assert result.written == 0
    assert field(r, DataClass.USER_STATUS, "user-456") is None
    assert field(r, DataClass.USER_ROLES, "user-456") is None


def test_a_dead_letter_replay_of_an_older_version_is_refused_after_a_preload(
    r: redis.Redis, store: Store, wrapper: Any, client: WrapperClient, subscriber: Any
) -> None:
    # Given version 5 of user-456 (active) dead-lettered long ago, and version 10 (suspended)
    # received by the subscriber and applied
    old = {
        "eventType": "user-changed",
        "eventId": "late-v5",
        "version": 5,
        "data": {"userId": "user-456", "status": "active"},
    }
    store.dead_letter(
        "unknown tenant at the time", json.dumps(old), channel=USERS_CHANNEL, tenant="acme"
    )
    wrapper.set_user("acme", "user-456", status="suspended", publish=False)
    newer = {
        **old,
        "eventId": "v10",
        "version": 10,
        "data": {"userId": "user-456", "status": "suspended"},
    }
    r.publish(USERS_CHANNEL, json.dumps(newer))
    wait_until(lambda: field(r, DataClass.USER_STATUS, "user-456") == "suspended", what="v10")
    # And a resync of the tenant
    preload_tenant(store, client, "acme")
    # When an operator replays the dead letter (``crmcache dlq replay``)
    entry = cli_json("dlq", "list")[0]
    assert cli_json("dlq", "replay", entry["id"])["results"][0]["outcome"] == "replayed"
    # Then the subscriber stamps it afresh and a worker applies it, but its version is refused
    wait_until(lambda: r.zscore(ACME.event_ids, "late-v5") is not None, what="the replay applied")
    assert field(r, DataClass.USER_STATUS, "user-456") == "suspended"


# A snapshot's stamp "S0:version+" covers every event received before S0 whatever its version:
# the snapshot already reflects them. The two tests below hold that part of the rule.


def test_a_newer_version_received_before_a_snapshot_but_applied_during_it_is_kept(
    r: redis.Redis, store: Store
) -> None:
    # Given version 10 applied, and version 12 received before a snapshot began but still
    # waiting for a worker
    store.apply_events("acme", [sales_role(store, 10, ["a"])])
    late = sales_role(store, 12, ["b"])
    s0 = store.begin_snapshot("acme")
    # When the snapshot (which reflects version 12) writes its chunk, the worker applies
    # version 12, and the snapshot commits
    store.write_snapshot_chunk("acme", DataClass.ROLES, s0, [("sales", '["b"]')])
    store.apply_events("acme", [late])
    store.commit_snapshot("acme", DataClass.ROLES, s0)
    # Then the role is there: the commit did not take it for one the snapshot lacked
    assert field(r, DataClass.ROLES, "sales") == '["b"]'


def test_a_higher_version_received_before_a_lower_one_survives_a_snapshot_commit(
    r: redis.Redis, store: Store
) -> None:
    # Given version 12 received before a snapshot began (its worker is slow), version 11
    # received after it and applied, so the snapshot's chunk leaves the field alone
    newer = sales_role(store, 12, ["b"])
    s0 = store.begin_snapshot("acme")
    store.apply_events("acme", [sales_role(store, 11, ["a"])])
    assert store.write_snapshot_chunk("acme", DataClass.ROLES, s0, [("sales", '["b"]')]) == 0
    # When version 12 is applied (its version wins) and then the snapshot commits
    store.apply_events("acme", [newer])
    store.commit_snapshot("acme", DataClass.ROLES, s0)
    # Then the role is still there: version 12 kept the stamp's later seq, so the commit did
    # not take it for a value written before the snapshot and missing from it
    assert field(r, DataClass.ROLES, "sales") == '["b"]'


def test_a_version_the_snapshot_covers_still_refuses_older_ones_received_after_it(
    r: redis.Redis, store: Store
) -> None:
    # Given version 2 received before a snapshot began, applied only after it committed
    pending = sales_role(store, 2, ["b"])
    s0 = store.begin_snapshot("acme")
    store.write_snapshot("acme", DataClass.ROLES, s0, [("sales", '["b"]')])
    assert store.apply_events("acme", [pending]).written == 0  # the snapshot has it already
    # When version 1 arrives afterwards
    result = store.apply_events("acme", [sales_role(store, 1, ["a"])])
    # Then it is refused: the snapshot's value is version 2
    assert result.written == 0
    assert field(r, DataClass.ROLES, "sales") == '["b"]'


def test_a_deleted_entitys_version_is_kept_for_the_retention_then_forgotten(
    r: redis.Redis, store: Store
) -> None:
    retention = 1.0
    stamps = ACME.stamps(DataClass.ROLES)

    def resync() -> None:
        s0 = store.begin_snapshot("acme")
        store.write_snapshot("acme", DataClass.ROLES, s0, [], tombstone_retention_s=retention)

    # Given role sales deleted at version 10, and a resync that found it deleted
    receive(store, "roles", "role-deleted", {"roleId": "sales"}, version=10)
    resync()
    # When resyncs run within the retention, then the version is kept
    resync()
    assert r.hget(stamps, "sales") is not None
    # When a resync runs once the retention has passed, then the tombstone is gone (memory
    # stays bounded by the live data), while a tombstone deleted since is kept
    receive(store, "roles", "role-deleted", {"roleId": "viewer"}, version=3)
    time.sleep(retention + 0.05)
    resync()
    assert r.hget(stamps, "sales") is None
    assert r.hget(stamps, "viewer") is not None
