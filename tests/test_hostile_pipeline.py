"""Hostile input end to end: a real subscriber and a real Celery worker over the test Redis keep
going whatever one message or task event holds; the bad ones are dead-lettered with a reason."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.celery import EVENTS_QUEUE
from consumer.ingest.subscriber import Subscriber
from crmcache import events, keyspace
from crmcache.events import Event
from crmcache.keyspace import DataClass, TenantKeys
from tests.conftest import wait_until

TENANT = "hostile"  # not a sandbox tenant: no resync touches it
KEYS = TenantKeys.of(TENANT)
BOMB = "[" * 3000 + "]" * 3000
NESTED_TOO_DEEP = "nested deeper than 32"
COST_TOO_BIG = (
    "credit-config-changed: newValue must be a number >= 0 and <= 1000000000000"
    " (CRM_MAX_CREDIT_VALUE)"
)


def message(event_type: str, data: Any, **envelope: Any) -> str:
    return json.dumps({"eventType": event_type, "data": data, **envelope})


def cost(operation: str, value: Any) -> str:
    return message("credit-config-changed", {"operationCode": operation, "newValue": value})


def field(r: redis.Redis, data_class: DataClass, name: str) -> bytes | None:
    return r.hget(KEYS.values(data_class), name)


def dead_letters(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [entry for _, entry in r.xrange(keyspace.DEAD_LETTERS)]


def dead_lettered(r: redis.Redis, count: int) -> Callable[[], bool]:
    return lambda: len(dead_letters(r)) >= count


def test_a_subscriber_fed_hostile_messages_stays_up_and_applies_every_good_one(
    r: redis.Redis, subscriber: Any
) -> None:
    # Given good events interleaved with nesting bombs, cross-stream grants, costs beyond the
    # maximum and a config nested too deep, published in one go
    grant = message("role-changed", {"roleId": "role-viewer", "permissions": ["*"]})
    deep_config = message("config-changed", {"configId": "c", "config": [[[[[]]]]]}).replace(
        "[[[[[]]]]]", "[" * 40 + "]" * 40
    )
    bad = [
        ("credit-configs", BOMB, NESTED_TOO_DEEP),
        ("hierarchy", grant, "role-changed belongs on the roles stream, not on hierarchy"),
        ("users", grant, "role-changed belongs on the roles stream, not on users"),
        ("credit-configs", cost("big", 1e308), COST_TOO_BIG),
        ("credit-configs", cost("huge", 10**400), COST_TOO_BIG),
        ("configs", deep_config, NESTED_TOO_DEEP),
    ]
    pipe = r.pipeline(transaction=False)
    for i in range(20):
        pipe.publish(KEYS.channel("credit-configs"), cost(f"op{i}", i))
        for stream, raw, _ in bad:
            pipe.publish(KEYS.channel(stream), raw)
        role = message("role-changed", {"roleId": f"role{i}", "permissions": ["crm.leads.*"]})
        pipe.publish(KEYS.channel("roles"), role)
    assert all(pipe.execute()), "the subscriber is not listening"
    # Then every good event lands
    wait_until(lambda: r.hlen(KEYS.values(DataClass.CREDIT_COSTS)) == 20, what="20 costs")
    wait_until(lambda: r.hlen(KEYS.values(DataClass.ROLES)) == 20, what="20 roles")
    # And every bad one is dead-lettered once, with its reason and channel
    wait_until(dead_lettered(r, 20 * len(bad)), what="every bad message dead-lettered")
    found = Counter((e[b"channel"].decode(), e[b"reason"].decode()) for e in dead_letters(r))
    assert found == Counter((KEYS.channel(s), reason) for s, _, reason in bad for _ in range(20))
    assert field(r, DataClass.ROLES, "role-viewer") is None
    # And the subscriber never stopped: the same connection, no reconnect, still the leader
    stats = subscriber.subscriber.stats
    assert subscriber.thread.is_alive() and subscriber.subscriber.is_leader
    assert (stats["subscribes"], stats["reconnects"], stats["dead_lettered"]) == (1, 0, 120)


def test_a_bug_while_handling_one_message_dead_letters_it_and_logs_one_traceback(
    r: redis.Redis,
    subscriber: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bug of ours hit by some messages (the one fault here real input cannot produce)
    check_gap = Subscriber._check_gap

    def broken(self: Subscriber, event: Event) -> Event:
        if str(event.data.get("operationCode")).startswith("poison"):
            raise ZeroDivisionError("division by zero")
        return check_gap(self, event)

    monkeypatch.setattr(Subscriber, "_check_gap", broken)
    caplog.set_level(logging.WARNING, logger="consumer.ingest.subscriber")
    # When five of them are published among good events
    for i in range(5):
        assert r.publish(KEYS.channel("credit-configs"), cost(f"poison{i}", i)) == 1
        assert r.publish(KEYS.channel("credit-configs"), cost(f"good{i}", i)) == 1
    # Then the good ones land and the poisoned ones are dead-lettered with the reason
    wait_until(lambda: r.hlen(KEYS.values(DataClass.CREDIT_COSTS)) == 5, what="5 good costs")
    wait_until(dead_lettered(r, 5), what="5 dead letters")
    reason = "unexpected ZeroDivisionError while handling a message: division by zero"
    assert {e[b"reason"].decode() for e in dead_letters(r)} == {reason}
    assert field(r, DataClass.CREDIT_COSTS, "poison0") is None
    # And the traceback was logged once, not once per message
    logged = [rec for rec in caplog.records if reason in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert subscriber.thread.is_alive() and subscriber.subscriber.stats["reconnects"] == 0
    assert subscriber.subscriber.stats["unexpected_errors"] == 5


def send_batch(app: Any, bodies: list[Any], tenant: str = TENANT) -> None:
    app.send_task("crmcache.apply_events", args=(tenant, bodies), queue=EVENTS_QUEUE)


def task_event(seq: int, stream: str, event_type: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"s": seq, "c": stream, "t": event_type, "d": data, **extra}


def task_cost(seq: int, operation: str, value: Any, **extra: Any) -> dict[str, Any]:
    data = {"operationCode": operation, "newValue": value}
    return task_event(seq, "credit-configs", "credit-config-changed", data, **extra)


def test_a_poisoned_event_in_a_task_is_dead_lettered_and_the_rest_applied(
    r: redis.Redis, worker: Any, celery_app: Any
) -> None:
    # Given a forged task whose batch holds good events and poisoned ones
    deep = json.loads("[" * 40 + "]" * 40)
    grant = {"roleId": "role-viewer", "permissions": ["*"]}
    poisoned = [
        (task_cost(2, "huge", 10**400), COST_TOO_BIG),
        (task_event(3, "hierarchy", "role-changed", grant), "role-changed belongs on the roles"),
        (task_cost(4, "big", 1e308), COST_TOO_BIG),
        (task_event(5, "configs", "config-changed", {"configId": "c", "config": deep}), "nested"),
        ("not an event", "task event is not an object"),
    ]
    batch = [task_cost(1, "op-a", 1), *(body for body, _ in poisoned), task_cost(6, "op-b", 2)]
    # When a real worker runs it
    send_batch(celery_app, batch)
    # Then the good events are applied and each poisoned one is dead-lettered with its reason
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "op-b") == b"2", what="op-b applied")
    assert field(r, DataClass.CREDIT_COSTS, "op-a") == b"1"
    wait_until(dead_lettered(r, len(poisoned)), what="the poisoned events dead-lettered")
    reasons = sorted(e[b"reason"].decode() for e in dead_letters(r))
    for (_, expected), reason in zip(sorted(poisoned, key=lambda p: p[1]), reasons, strict=True):
        assert expected in reason
    assert field(r, DataClass.ROLES, "role-viewer") is None
    # And the task is not retried: the next batch runs and nothing was dead-lettered again
    send_batch(celery_app, [task_cost(7, "op-c", 3)])
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "op-c") == b"3", what="the next batch")
    assert len(dead_letters(r)) == len(poisoned)


def test_an_event_whose_plan_raises_is_dead_lettered_and_the_rest_applied(
    r: redis.Redis, worker: Any, celery_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bug of ours in planning one kind of write (the worker runs in this process)
    plan_config = events._PLANNERS["config-changed"]

    def broken(data: Any, plan: events.WritePlan) -> None:
        if data["configId"] == "poison":
            raise KeyError("missing")
        plan_config(data, plan)

    monkeypatch.setitem(events._PLANNERS, "config-changed", broken)
    batch = [
        task_event(i, "configs", "config-changed", {"configId": cid, "config": {"on": True}})
        for i, cid in enumerate(["c1", "poison", "c2"], start=1)
    ]
    # When a real worker runs the batch
    send_batch(celery_app, batch)
    # Then the other events are applied and the poisoned one is dead-lettered with the reason
    wait_until(lambda: field(r, DataClass.CONFIGS, "c2") is not None, what="c2 applied")
    assert field(r, DataClass.CONFIGS, "c1") is not None
    ((entry),) = wait_until(lambda: dead_letters(r), what="the poisoned event dead-lettered")
    assert entry[b"reason"].decode() == "unexpected KeyError while planning its writes: 'missing'"
    assert json.loads(entry[b"raw"])["d"]["configId"] == "poison"
    assert field(r, DataClass.CONFIGS, "poison") is None


HOUR_MS = 3_600_000


def test_an_event_id_repeated_within_the_dedupe_window_is_a_no_op(
    r: redis.Redis, worker: Any, celery_app: Any, settings: Any
) -> None:
    assert settings.dedupe_window == 86_400  # the default: a day
    # Given event X applied, then remembered as applied 23 hours ago (no test waits a day)
    send_batch(celery_app, [task_cost(1, "op", 1, id="X")])
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "op") == b"1", what="X applied")
    r.zadd(KEYS.event_ids, {"X": time.time() * 1000 - 23 * HOUR_MS}, xx=True)
    # And event Y applied, then remembered as applied 25 hours ago
    send_batch(celery_app, [task_cost(2, "other", 1, id="Y")])
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "other") == b"1", what="Y applied")
    r.zadd(KEYS.event_ids, {"Y": time.time() * 1000 - 25 * HOUR_MS}, xx=True)
    # When a batch prunes the window, and X is then repeated with a newer stamp and value
    send_batch(celery_app, [task_cost(3, "prune", 1, id="Z")])
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "prune") == b"1", what="Z applied")
    send_batch(celery_app, [task_cost(4, "op", 2, id="X"), task_cost(5, "last", 1)])
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "last") == b"1", what="the repeat")
    # Then the repeat of X (23 hours on) changed nothing; Y (25 hours on) is forgotten
    assert field(r, DataClass.CREDIT_COSTS, "op") == b"1"
    assert r.zscore(KEYS.event_ids, "X") is not None
    assert r.zscore(KEYS.event_ids, "Y") is None


def readme_acl_rules() -> dict[str, list[str]]:
    """The README's ACL example, user -> rules, so that the example tested is the one shown."""
    text = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    rules = {}
    for line in text.splitlines():
        if line.startswith("ACL SETUSER "):
            user, *rest = line.split()[2:]
            rules[user] = rest
    assert set(rules) == {"crm-wrapper", "crm-subscriber"}, rules
    return rules


@pytest.fixture
def acl_users(r: redis.Redis, redis_server: Any) -> Iterator[dict[str, redis.Redis]]:
    """The README's ACL users on the test Redis, and a client logged in as each."""
    clients = {}
    for user, rules in readme_acl_rules().items():
        r.execute_command("ACL", "SETUSER", user, "reset", *rules)
        password = next(rule[1:] for rule in rules if rule.startswith(">"))
        clients[user] = redis.Redis(
            port=redis_server.port, username=user, password=password, socket_timeout=5
        )
    yield clients
    for user, client in clients.items():
        client.close()
        r.execute_command("ACL", "DELUSER", user)


def test_the_readme_acl_lets_the_wrapper_only_publish_and_the_subscriber_only_listen(
    r: redis.Redis, acl_users: dict[str, redis.Redis], start_subscriber: Any, redis_server: Any
) -> None:
    wrapper, sub = acl_users["crm-wrapper"], acl_users["crm-subscriber"]
    # Given a subscriber logged in as crm-subscriber (the broker keeps its own login)
    rules = readme_acl_rules()["crm-subscriber"]
    password = next(rule[1:] for rule in rules if rule.startswith(">"))
    url = f"redis://crm-subscriber:{password}@127.0.0.1:{redis_server.port}/0"
    r.script_flush()  # so that the subscriber loads each script it runs under its login
    running = start_subscriber(redis_url=url)
    wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
    # When the Wrapper's publisher sends a good event and a bad one on the input channels
    assert wrapper.publish(KEYS.channel("credit-configs"), cost("acl", 4)) == 1
    assert wrapper.publish(KEYS.channel("hierarchy"), cost("acl", 5)) == 1
    # Then the good one lands and the bad one is dead-lettered by the subscriber
    wait_until(lambda: field(r, DataClass.CREDIT_COSTS, "acl") == b"4", what="the event")
    wait_until(dead_lettered(r, 1), what="the cross-stream event dead-lettered")
    # And the publisher can neither publish elsewhere nor touch a key
    with pytest.raises(redis.exceptions.NoPermissionError):
        wrapper.publish(KEYS.changes_channel, "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        wrapper.hset(KEYS.values(DataClass.ROLES), "role-viewer", '["*"]')
    # And the subscriber may listen to the input channels but never publish on them
    with pytest.raises(redis.exceptions.NoPermissionError):
        sub.publish(KEYS.channel("roles"), "{}")
    pubsub = sub.pubsub()
    pubsub.subscribe(KEYS.channel("roles"))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    pubsub.close()
    # And the subscriber ran and stepped down without a refused command
    running.stop()
    assert running.exit_code == 0 and running.subscriber.stats["reconnects"] == 0


def test_the_opt_in_fast_path_under_the_readme_acl_is_refused_and_the_worker_applies(
    r: redis.Redis, acl_users: dict[str, redis.Redis], start_subscriber: Any, redis_server: Any
) -> None:
    # Given a subscriber with the fast path on but the README's narrow login (no writes, no
    # PUBLISH: the fast path needs the workers' rights)
    rules = readme_acl_rules()["crm-subscriber"]
    password = next(rule[1:] for rule in rules if rule.startswith(">"))
    url = f"redis://crm-subscriber:{password}@127.0.0.1:{redis_server.port}/0"
    r.script_flush()
    running = start_subscriber(redis_url=url, revoke_fast_path=True)
    wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
    # When the Wrapper suspends a user, twice
    status = KEYS.values(DataClass.USER_STATUS)
    for user in ("acl-1", "acl-2"):
        suspend = {"eventType": "user-changed", "data": {"userId": user, "status": "suspended"}}
        r.publish(KEYS.channel("users"), json.dumps(suspend))
        # Then the suspension is applied all the same (by the worker: the task is the durable path)
        wait_until(lambda u=user: r.hget(status, u) == b"suspended", what="the suspension")
    # And the refused fast path was counted each time and the subscriber carried on
    assert running.subscriber.stats["fast_path_failures"] == 2
    assert running.subscriber.stats["fast_path_events"] == 0
    running.stop()
    assert running.exit_code == 0


def crmcache_publish(stream: str, raw: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("crmcache")), "publish", TENANT, stream, raw, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["published"] is False
    return result


def test_crmcache_publish_refuses_what_the_subscriber_would_dead_letter(
    env: dict[str, str],
) -> None:
    grant = message("role-changed", {"roleId": "role-viewer", "permissions": ["*"]})
    refused = crmcache_publish("hierarchy", grant)
    assert refused["error"] == "role-changed belongs on the roles stream, not on hierarchy"
    # And it applies the configured bounds, not the defaults
    refused = crmcache_publish("credit-configs", cost("op", 11), CRM_MAX_CREDIT_VALUE="10")
    assert "newValue must be a number >= 0 and <= 10 " in refused["error"]
