"""The operator commands, run as a user runs them (``crmcache ...`` subprocesses), against a
running stack: the session's Redis, sandbox Wrapper, in-process Celery worker and subscriber.
Output is read with ``--json``; exit codes are what scripts rely on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from crmcache.keyspace import DEAD_LETTERS, DataClass, RefKind, TenantKeys
from crmcache.tokens import VersionToken, parse_token
from ops.cli import build_parser
from ops.dev.redis_server import free_port
from tests.conftest import wait_until

CRMCACHE = str(Path(sys.executable).with_name("crmcache"))
MY_COMMANDS = ("up", "status", "preload", "dlq", "publish", "inspect", "flower")
COSTS = TenantKeys.of("acme").values(DataClass.CREDIT_COSTS)


@pytest.fixture(autouse=True)
def _session_env(env: dict[str, str]) -> None:
    """Every command here reads the session stack's settings from the environment."""


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    return subprocess.run(
        [CRMCACHE, *args],
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_json(*args: str, code: int = 0) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def cost_event(op: str, value: int) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": op, "newValue": value}}
    )


def test_every_command_answers_help_and_documents_its_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None and set(MY_COMMANDS) <= set(commands)
    for name in [*commands, "dlq list", "dlq show", "dlq replay", "dlq purge"]:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*name.split(), "--help"])
        assert exited.value.code == 0, name
        text = capsys.readouterr().out
        if name in MY_COMMANDS:
            assert "exit codes" in text, name


def test_publish_validates_then_the_event_reaches_the_cache(
    subscriber: Any, r: redis.Redis
) -> None:
    result = cli_json("publish", "acme", "credit-configs", cost_event("crm.leads.create", 9))
    assert result["published"] and result["receivers"] >= 1
    assert result["channel"] == "crm:acme:credit-configs"
    wait_until(lambda: r.hget(COSTS, "crm.leads.create") == b"9", what="the published cost")


def test_publish_reads_the_event_from_stdin(subscriber: Any, r: redis.Redis) -> None:
    done = cli("publish", "acme", "credit-configs", "-", stdin=cost_event("crm.x", 0))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: r.hget(COSTS, "crm.x") == b"0", what="a cost of 0")


def test_publish_prints_the_seq_token_and_waits_until_the_event_is_applied(
    subscriber: Any, r: redis.Redis
) -> None:
    event = {
        "eventType": "user-changed",
        "seq": 7,
        "data": {"userId": "u-tok", "status": "suspended"},
    }
    result = cli_json("publish", "--wait", "20", "tok", "users", json.dumps(event))
    assert result["token"] == "users:7"
    # --wait returned only once the event was applied, with the version token it left
    keys = TenantKeys.of("tok")
    assert r.hget(keys.values(DataClass.USER_STATUS), "u-tok") == b"suspended"
    epoch, version = r.hmget(keys.meta, "epoch", "version")
    applied = parse_token(result["appliedToken"])
    # (the subscriber's resync of the tenant, on a first seq with no predecessor, may have
    # moved the version on since)
    assert isinstance(applied, VersionToken) and applied.epoch == epoch.decode()
    assert 1 <= applied.version <= int(version)


def test_publish_wait_needs_a_seq(r: redis.Redis) -> None:
    done = cli("publish", "--wait", "1", "acme", "credit-configs", cost_event("crm.x", 1))
    assert done.returncode == 2 and "--wait needs" in done.stderr


def test_publish_refuses_an_invalid_event_with_exit_2(r: redis.Redis) -> None:
    result = cli_json(
        "publish", "acme", "credit-configs", cost_event("crm.leads.create", -1), code=2
    )
    assert result["published"] is False and "newValue" in result["error"]


def test_publish_with_nobody_listening_exits_1(r: redis.Redis) -> None:
    done = cli("publish", "acme", "credit-configs", cost_event("crm.leads.create", 3))
    assert done.returncode == 1
    assert "no subscriber" in done.stderr


def test_preload_then_status_shows_ready_tenants_workers_and_the_subscriber(
    subscriber: Any, wrapper: Any, r: redis.Redis
) -> None:
    # Given the Wrapper's sample tenants, preloaded here with a progress bar
    preload = cli_json("preload", "--all")
    assert preload["ok"] and {t["tenant"] for t in preload["tenants"]} == {"acme", "globex"}
    # When status is asked
    status = cli_json("status", "--strict")
    # Then every tenant is ready, with its entries, and the stack is healthy
    tenants = {t["tenant"]: t for t in status["tenants"]}
    assert {"acme", "globex"} <= set(tenants)
    acme = tenants["acme"]
    assert acme["ready"] and acme["entries"]["credit-costs"] == 4
    assert acme["entries"]["user-status"] == 4 and acme["lastPreloadMs"] > 0
    assert status["workers"]["count"] >= 1
    assert status["subscriber"]["active"] == subscriber.subscriber.token
    assert status["deadLetters"] == {"stored": 0, "total": 0}
    assert status["healthy"] is True


def test_status_strict_fails_when_a_tenant_is_not_ready(r: redis.Redis) -> None:
    r.hset(TenantKeys.of("acme").meta, "preload-started-ms", 1)
    status = cli_json("status", "--strict", "--ping-timeout", "0", code=1)
    assert status["healthy"] is False
    assert status["tenants"][0]["ready"] is False


def test_preload_enqueued_to_the_workers_and_waited_for(
    worker: Any, wrapper: Any, r: redis.Redis
) -> None:
    result = cli_json("preload", "globex", "--enqueue", "--wait", "20")
    assert result["ok"], result
    assert r.hget(TenantKeys.of("globex").meta, "ready") == b"1"


def test_preload_of_a_tenant_the_wrapper_does_not_know_exits_1(
    wrapper: Any, r: redis.Redis
) -> None:
    result = cli_json("preload", "--tenant", "nosuch", code=1)
    assert result["ok"] is False and "404" in result["tenants"][0]["detail"]


def test_inspect_shows_values_with_stamps_snapshot_floors_and_tombstones(
    subscriber: Any, wrapper: Any, r: redis.Redis
) -> None:
    # Given a preloaded tenant, then one changed and one deleted operation
    cli_json("preload", "--tenant", "acme")
    cli_json("publish", "acme", "credit-configs", cost_event("crm.leads.create", 4))
    deleted = {
        "eventType": "credit-config-deleted",
        "data": {"operationCode": "crm.reports.export"},
    }
    cli_json("publish", "acme", "credit-configs", json.dumps(deleted))
    wait_until(lambda: r.hget(COSTS, "crm.reports.export") is None, what="the delete")
    # When the tenant is inspected
    contents = cli_json("inspect", "acme", "--class", "credit-costs")
    # Then values carry their stamps: events' sequence numbers, or the snapshot's floor
    costs = contents["classes"]["credit-costs"]
    entries = {e["field"]: e for e in costs["entries"]}
    assert entries["crm.leads.create"]["value"] == 4
    assert int(entries["crm.leads.create"]["stamp"]) > costs["floor"] >= 1
    assert entries["crm.contacts.view"] == {"field": "crm.contacts.view", "value": 0, "stamp": None}
    assert [t["field"] for t in costs["tombstoneEntries"]] == ["crm.reports.export"]
    assert contents["ready"] is True and list(contents["classes"]) == ["credit-costs"]


def test_inspect_tells_fresh_until_from_stale_until(r: redis.Redis) -> None:
    # Given a profile as the reader caches it: fresh for 300 s, kept 3,600 s more for
    # stale-if-error (the key's TTL covers both)
    now = int(time.time() * 1000)
    key = TenantKeys.of("acme").ref(RefKind.PROFILE, "user-456")
    r.hset(key, mapping={"value": "{}", "fetched-ms": now, "expires-ms": now + 300_000})
    r.pexpire(key, 3_900_000)
    # When the tenant is inspected
    profile = cli_json("inspect", "acme")["references"]["profile"][0]
    # Then the two moments are told apart
    assert profile["freshUntilMs"] == now + 300_000
    assert abs(profile["staleUntilMs"] - (now + 3_900_000)) < 10_000
    table = cli("inspect", "acme", env={"COLUMNS": "200"}).stdout
    assert "fresh until" in table and "stale until" in table and "(in 4m" in table


def test_inspect_refuses_an_invalid_tenant_with_exit_2(r: redis.Redis) -> None:
    assert cli("inspect", "a:b").returncode == 2


def test_dlq_list_show_replay_and_purge(subscriber: Any, store: Any, r: redis.Redis) -> None:
    # Given one message that is still invalid, and one that is valid now (e.g. after a fix)
    r.publish("crm:acme:roles", b"not json")
    wait_until(lambda: r.xlen(DEAD_LETTERS) == 1, what="the dead letter")
    store.dead_letter(
        "unknown tenant at the time",
        cost_event("crm.replayed", 6),
        channel="crm:acme:credit-configs",
        tenant="acme",
    )
    # list: newest first
    listed = cli_json("dlq", "list")
    assert [e["reason"][:12] for e in listed] == ["unknown tena", "invalid JSON"]
    valid_id, invalid_id = listed[0]["id"], listed[1]["id"]
    # show: the raw message
    shown = cli_json("dlq", "show", invalid_id)
    assert shown["raw"] == "not json" and shown["channel"] == "crm:acme:roles"
    # replay of the still-invalid one: refused, kept, exit 1
    refused = cli_json("dlq", "replay", invalid_id, code=1)
    assert refused["results"][0]["outcome"] == "invalid"
    # replay of the valid one: published, applied, removed
    replayed = cli_json("dlq", "replay", valid_id)
    assert replayed["results"][0]["outcome"] == "replayed"
    wait_until(lambda: r.hget(COSTS, "crm.replayed") == b"6", what="the replayed event")
    assert [e["id"] for e in cli_json("dlq", "list")] == [invalid_id]
    # purge: only with --yes
    assert cli("dlq", "purge").returncode == 2
    assert cli_json("dlq", "purge", "--yes") == {"purged": 1}
    assert cli_json("dlq", "list") == []
    assert cli("dlq", "show", invalid_id).returncode == 1
    assert cli("dlq", "show", "nonsense").returncode == 2


def test_an_unreachable_redis_exits_1_with_one_line(env: dict[str, str]) -> None:
    done = cli(
        "status",
        env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "CRM_REDIS_SOCKET_TIMEOUT": "1"},
    )
    assert done.returncode == 1
    assert "unreachable" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_setting_exits_2(env: dict[str, str]) -> None:
    done = cli("status", env={"FLOWER_BASIC_AUTH": "no-colon"})
    assert done.returncode == 2
    assert "FLOWER_BASIC_AUTH" in done.stderr


PYTHON = sys.executable
CELERY = str(Path(sys.executable).with_name("celery"))
ENTRY_POINTS = {
    "crmcache": [CRMCACHE, "status"],
    "celery worker": [CELERY, "-A", "tasks", "worker", "--pool=solo"],
    "celery beat": [CELERY, "-A", "tasks", "beat"],
    "python -m consumer": [PYTHON, "-m", "consumer"],
    "healthcheck": [PYTHON, "-m", "ops.healthcheck", "worker"],
    "sandbox": [PYTHON, "-m", "ops.dev.run_sandbox"],
}


@pytest.mark.parametrize("argv", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_a_bad_setting_is_one_line_and_exit_2_in_every_entry_point(
    argv: list[str], env: dict[str, str]
) -> None:
    # Given a malformed setting, when any process starts
    done = subprocess.run(
        argv,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "CRM_BATCH_SIZE": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it prints one line naming the variable and exits 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, lines
    assert len(lines) == 1 and "CRM_BATCH_SIZE" in lines[0], lines


def test_status_shows_hit_rates_from_the_published_metrics_snapshot(r: redis.Redis) -> None:
    # Given a snapshot as publish_metrics stores it: 3 critical hits, 1 miss since the last one
    from crmcache.read_metrics import build_snapshot, counter_field

    counts = {counter_field("credit-costs", "hits"): 3, counter_field("credit-costs", "misses"): 1}
    snapshot, _ = build_snapshot("acme", counts, None, 0.95, 1_000)
    r.set(TenantKeys.of("acme").metrics_snapshot, json.dumps(snapshot))
    r.hset(TenantKeys.of("acme").meta, "ready", 1)
    # When status is asked, then it shows them
    status = cli_json("status", "--ping-timeout", "0")
    rates = status["tenants"][0]["hitRates"]
    assert rates["window"]["criticalHitRate"] == 0.75
    assert rates["totals"]["totalRequests"] == 4 and rates["atMs"] == 1_000
