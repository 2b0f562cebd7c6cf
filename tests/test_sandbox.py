"""The development Wrapper sandbox, against the real server on loopback (and a real Redis)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
import requests

from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper
from sandbox.__main__ import main as sandbox_main

TOKEN = "s3cret"
CONSUME = "/api/credits/consume"


@pytest.fixture()
def wrapper() -> Iterator[SandboxWrapper]:
    with SandboxWrapper(token=TOKEN) as sandbox:
        yield sandbox


@pytest.fixture()
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield session


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture()
def subscriber(redis_url: str) -> Iterator[redis.client.PubSub]:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("crm:*")
    assert _next_message(pubsub, kind="psubscribe") is not None
    try:
        yield pubsub
    finally:
        pubsub.close()
        client.close()


def _get(http: requests.Session, sandbox: SandboxWrapper, path: str, **kw: Any) -> Any:
    headers = {"X-Tenant-ID": kw.pop("tenant", "acme")}
    return http.get(f"{sandbox.url}{path}", headers=headers, timeout=5, **kw)


def _consume_body(key: str, user: str = "user-456", amount: float = 1) -> dict[str, Any]:
    return {
        "idempotencyKey": key,
        "userId": user,
        "operationCode": "crm.leads.create",
        "amount": amount,
        "occurredAt": "2024-05-01T12:00:00Z",
    }


def _next_message(pubsub: redis.client.PubSub, kind: str = "pmessage") -> dict[str, Any]:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message within 3 s")


# --- the Wrapper API ---------------------------------------------------------------------------


def test_lists_tenants_and_credit_configs_including_zero_costs(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    tenants = http.get(f"{wrapper.url}/api/tenants", timeout=5).json()
    configs = _get(http, wrapper, "/api/credits/configs").json()

    assert tenants == [{"tenantId": "acme"}, {"tenantId": "globex"}]
    costs = {c["operationCode"]: c["creditCost"] for c in configs}
    assert costs["crm.leads.create"] == 1
    assert costs["crm.reports.export"] == 5
    assert costs["crm.contacts.view"] == 0


def test_user_access_pages_through_every_user_once(http: requests.Session) -> None:
    users = [{"userId": f"u{i:03d}", "roles": ["r"]} for i in range(25)]
    with SandboxWrapper({"tenants": {"t1": {"users": users}}}, token=TOKEN) as sandbox:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
            page = _get(http, sandbox, "/api/users/access", tenant="t1", params=params).json()
            pages += 1
            seen += [item["userId"] for item in page["items"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break

    assert pages == 3
    assert seen == [u["userId"] for u in users]


def test_user_access_rejects_bad_cursor_and_limit(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    bad_limit = _get(http, wrapper, "/api/users/access", params={"limit": 0})
    bad_cursor = _get(http, wrapper, "/api/users/access", params={"cursor": "!!"})

    assert bad_limit.status_code == 400 and "limit" in bad_limit.json()["error"]
    assert bad_cursor.status_code == 400


def test_default_page_holds_all_sample_users_with_status_and_roles(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    page = _get(http, wrapper, "/api/users/access").json()

    assert page["nextCursor"] is None
    by_id = {item["userId"]: item for item in page["items"]}
    assert by_id["user-456"] == {"userId": "user-456", "status": "active", "roles": ["sales"]}
    assert any(item["status"] == "suspended" for item in page["items"])


@pytest.mark.parametrize(
    ("path", "tenant"),
    [
        ("/api/users/nobody/profile", "acme"),
        ("/api/users/nobody/credits", "acme"),
        ("/api/hierarchy/nowhere", "acme"),
        ("/api/roles", "initech"),
        ("/api/no/such/route", "acme"),
    ],
)
def test_unknown_things_are_json_404s(
    wrapper: SandboxWrapper, http: requests.Session, path: str, tenant: str
) -> None:
    response = _get(http, wrapper, path, tenant=tenant)

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert "error" in response.json()


def test_missing_or_malformed_tenant_header_is_a_400(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    missing = http.get(f"{wrapper.url}/api/roles", timeout=5)
    malformed = _get(http, wrapper, "/api/roles", tenant="acme:globex")

    assert missing.status_code == 400
    assert malformed.status_code == 400


def test_tenants_do_not_share_user_data(wrapper: SandboxWrapper, http: requests.Session) -> None:
    acme = _get(http, wrapper, "/api/users/user-456/profile", tenant="acme").json()
    globex = _get(http, wrapper, "/api/users/user-456/profile", tenant="globex").json()
    acme_credits = _get(http, wrapper, "/api/users/user-456/credits", tenant="acme").json()

    assert acme["userId"] == globex["userId"] == "user-456"
    assert acme["email"] != globex["email"]
    assert acme_credits == {"userId": "user-456", "available": 100}


def test_path_segments_are_url_decoded(wrapper: SandboxWrapper, http: requests.Session) -> None:
    wrapper.set_user("acme", "team/a b", profile={"name": "Odd Id"})

    response = _get(http, wrapper, f"/api/users/{quote('team/a b', safe='')}/profile")

    assert response.json() == {"userId": "team/a b", "name": "Odd Id"}


def test_hierarchy_node_is_served(wrapper: SandboxWrapper, http: requests.Session) -> None:
    node = _get(http, wrapper, "/api/hierarchy/team-sales").json()

    assert node["parentId"] == "org-acme"
    assert "user-456" in node["children"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}"])
def test_token_is_required_when_configured(
    wrapper: SandboxWrapper, authorization: str | None
) -> None:
    headers = {"X-Tenant-ID": "acme"}
    if authorization:
        headers["Authorization"] = authorization
    with requests.Session() as session:
        api = session.get(f"{wrapper.url}/api/roles", headers=headers, timeout=5)
        admin = session.delete(f"{wrapper.url}/_admin/acme/roles/viewer", headers=headers)

    assert api.status_code == 401
    assert admin.status_code == 401
    assert "viewer" in {r["roleId"] for r in wrapper.state.roles("acme")}


# --- credits -----------------------------------------------------------------------------------


def test_consume_charges_once_per_idempotency_key(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    body = _consume_body("order-1", amount=3)
    url, headers = f"{wrapper.url}{CONSUME}", {"X-Tenant-ID": "acme"}

    first = http.post(url, json=body, headers=headers, timeout=5)
    again = http.post(url, json={**body, "amount": 50}, headers=headers, timeout=5)

    expected = {"idempotencyKey": "order-1", "accepted": True, "available": 97}
    assert first.json() == again.json() == expected
    assert _get(http, wrapper, "/api/users/user-456/credits").json()["available"] == 97
    assert wrapper.consume_calls["order-1"] == 2
    assert wrapper.consumed == {"order-1": body}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[]",
        json.dumps({**_consume_body("k"), "amount": -1}).encode(),
        json.dumps({**_consume_body("k"), "amount": True}).encode(),
        json.dumps({k: v for k, v in _consume_body("k").items() if k != "occurredAt"}).encode(),
        json.dumps({**_consume_body("k"), "occurredAt": "yesterday"}).encode(),
    ],
)
def test_consume_rejects_bad_bodies_with_a_400(
    wrapper: SandboxWrapper, http: requests.Session, payload: bytes
) -> None:
    response = http.post(
        f"{wrapper.url}{CONSUME}", data=payload, headers={"X-Tenant-ID": "acme"}, timeout=5
    )

    assert response.status_code == 400
    assert "error" in response.json()
    assert wrapper.state.credits("acme", "user-456")["available"] == 100


def test_consume_for_an_unknown_user_is_a_404(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    response = http.post(
        f"{wrapper.url}{CONSUME}",
        json=_consume_body("k", user="ghost"),
        headers={"X-Tenant-ID": "acme"},
        timeout=5,
    )

    assert response.status_code == 404


# --- fault injection ---------------------------------------------------------------------------


def test_fault_with_status_hits_only_the_next_n_matching_requests(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    wrapper.set_fault(status=503, path_prefix="/api/roles", times=2)

    statuses = [_get(http, wrapper, "/api/roles").status_code for _ in range(3)]
    other = _get(http, wrapper, "/api/credits/configs")

    assert statuses == [503, 503, 200]
    assert other.status_code == 200
    assert wrapper.requests["GET", "/api/roles"] == 3


def test_fault_delay_slows_requests_until_cleared(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    wrapper.set_fault(delay=0.3)

    started = time.monotonic()
    slow = _get(http, wrapper, "/api/roles")
    slow_took = time.monotonic() - started
    wrapper.clear_faults()
    started = time.monotonic()
    _get(http, wrapper, "/api/roles")
    fast_took = time.monotonic() - started

    assert slow.status_code == 200
    assert slow_took >= 0.3
    assert fast_took < 0.3


def test_a_lost_answer_is_charged_once_on_retry(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    wrapper.set_fault(path_prefix=CONSUME, times=1, drop=True, after=True)
    url, headers = f"{wrapper.url}{CONSUME}", {"X-Tenant-ID": "acme"}

    with pytest.raises(requests.ConnectionError):
        http.post(url, json=_consume_body("lost-1", amount=10), headers=headers, timeout=5)
    retry = http.post(url, json=_consume_body("lost-1", amount=10), headers=headers, timeout=5)

    assert retry.json()["available"] == 90
    assert wrapper.consume_calls["lost-1"] == 2
    assert wrapper.state.credits("acme", "user-456")["available"] == 90


def test_down_closes_connections_unanswered_until_up_again(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    assert _get(http, wrapper, "/api/roles").status_code == 200  # a kept-alive connection

    wrapper.set_down(True)
    with pytest.raises(requests.ConnectionError):
        _get(http, wrapper, "/api/roles")
    with requests.Session() as fresh, pytest.raises(requests.ConnectionError):
        _get(fresh, wrapper, "/api/roles")
    wrapper.set_down(False)

    assert _get(http, wrapper, "/api/roles").status_code == 200
    assert wrapper.dropped["GET", "/api/roles"] == 2


def test_restart_serves_again_on_the_same_port(http: requests.Session) -> None:
    sandbox = SandboxWrapper(token=TOKEN).start()
    try:
        url = sandbox.url
        sandbox.stop()
        with pytest.raises(requests.ConnectionError):
            http.get(f"{url}/api/roles", timeout=1)
        sandbox.start()
        assert sandbox.url == url
        assert _get(http, sandbox, "/api/roles").status_code == 200
    finally:
        sandbox.stop()


# --- admin endpoints and events ----------------------------------------------------------------


def test_admin_endpoint_changes_the_data(wrapper: SandboxWrapper, http: requests.Session) -> None:
    url = f"{wrapper.url}/_admin/acme/credit-configs/crm.leads.create"

    event = http.put(url, json={"creditCost": 4}, timeout=5).json()
    configs = _get(http, wrapper, "/api/credits/configs").json()

    assert event["eventType"] == "credit-config-changed"
    assert event["data"] == {"operationCode": "crm.leads.create", "newValue": 4, "oldValue": 1}
    assert {"operationCode": "crm.leads.create", "creditCost": 4} in configs


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/_admin/acme/credit-configs/x", b"{oops", 400),
        ("PUT", "/_admin/acme/credit-configs/x", b'{"creditCost": -1}', 400),
        ("PUT", "/_admin/acme/credit-configs/x", b'{"cost": 1}', 400),
        ("PUT", "/_admin/acme/roles/r", b'{"permissions": "crm.*"}', 400),
        ("PUT", "/_admin/acme/users/u", b'{"roles": [null]}', 400),
        ("POST", "/_admin/acme/users/user-456/credits", b'{"amount": -1000}', 400),
        ("POST", "/_admin/acme/users/user-456/credits", b'{"amount": "5"}', 400),
        ("PUT", "/_admin/acme/hierarchy/e", b"[1, 2]", 400),
        ("DELETE", "/_admin/acme/roles/no-such-role", b"", 404),
        ("PUT", "/_admin/initech/roles/r", b'{"permissions": []}', 404),
    ],
)
def test_admin_endpoints_refuse_bad_input_with_json_errors(
    wrapper: SandboxWrapper,
    http: requests.Session,
    method: str,
    path: str,
    body: bytes,
    status: int,
) -> None:
    response = http.request(method, f"{wrapper.url}{path}", data=body, timeout=5)

    assert response.status_code == status
    assert "error" in response.json()
    assert wrapper.events == []


def test_admin_control_endpoints_drive_faults_and_downtime(
    wrapper: SandboxWrapper, http: requests.Session
) -> None:
    admin = f"{wrapper.url}/_admin"

    http.post(f"{admin}/_faults", json={"status": 502, "pathPrefix": "/api/roles", "times": 1})
    faulted = _get(http, wrapper, "/api/roles").status_code
    http.put(f"{admin}/_down", json={"down": True}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        _get(http, wrapper, "/api/roles")
    still_up = http.put(f"{admin}/_down", json={"down": False}, timeout=5)

    assert faulted == 502
    assert still_up.json() == {"down": False}
    assert _get(http, wrapper, "/api/roles").status_code == 200


def test_mutator_publishes_the_full_envelope(
    redis_url: str, subscriber: redis.client.PubSub
) -> None:
    with SandboxWrapper(redis_url=redis_url) as sandbox:
        returned = sandbox.set_credit_cost("acme", "crm.leads.create", 0)
        message = _next_message(subscriber)

    event = json.loads(message["data"])
    assert message["channel"] == b"crm:acme:credit-configs"
    assert event == returned
    assert event["eventType"] == "credit-config-changed"
    assert event["tenantId"] == "acme"
    assert event["data"] == {"operationCode": "crm.leads.create", "newValue": 0, "oldValue": 1}
    assert (event["version"], event["seq"]) == (1, 1)
    assert len(event["eventId"]) == 32
    assert event["occurredAt"].endswith("Z")


def test_seq_counts_per_stream_and_version_per_entity(
    redis_url: str, subscriber: redis.client.PubSub
) -> None:
    with SandboxWrapper(redis_url=redis_url) as sandbox:
        sandbox.set_user("acme", "user-456", status="suspended")
        sandbox.set_user("acme", "user-123", roles=["viewer"])
        sandbox.top_up_credits("acme", "user-456", 25)
        sandbox.set_role("acme", "sales", ["crm.leads.view"])
        events = [json.loads(_next_message(subscriber)["data"]) for _ in range(4)]

    users = [e for e in events if e["eventType"] != "role-changed"]
    assert [e["seq"] for e in users] == [1, 2, 3]
    assert [e["version"] for e in users] == [1, 1, 2]
    assert users[0]["data"] == {"userId": "user-456", "status": "suspended"}
    assert users[1]["data"] == {"userId": "user-123", "roles": ["viewer"]}
    assert users[2]["data"] == {"userId": "user-456", "available": 125, "delta": 25}
    assert events[3]["seq"] == 1 and events[3]["data"]["permissions"] == ["crm.leads.view"]


def test_unpublished_change_leaves_a_seq_gap(
    redis_url: str, subscriber: redis.client.PubSub
) -> None:
    with SandboxWrapper(redis_url=redis_url) as sandbox:
        sandbox.delete_role("acme", "viewer", publish=False)
        sandbox.delete_role("acme", "sales")
        event = json.loads(_next_message(subscriber)["data"])

    assert event["eventType"] == "role-deleted"
    assert event["data"] == {"roleId": "sales"}
    assert event["seq"] == 2


def test_admin_http_change_is_published(
    redis_url: str, subscriber: redis.client.PubSub, http: requests.Session
) -> None:
    with SandboxWrapper(redis_url=redis_url, token=TOKEN) as sandbox:
        url = f"{sandbox.url}/_admin/globex/hierarchy/team-new"
        node = {"parentId": "org-globex", "children": [], "affectedEntityIds": ["org-globex"]}
        answer = http.put(url, json=node, timeout=5)
        message = _next_message(subscriber)
        stored = _get(http, sandbox, "/api/hierarchy/team-new", tenant="globex").json()

    assert answer.status_code == 200
    assert message["channel"] == b"crm:globex:hierarchy"
    assert json.loads(message["data"])["data"] == {
        "entityId": "team-new",
        "affectedEntityIds": ["org-globex"],
    }
    assert stored == {"entityId": "team-new", "parentId": "org-globex", "children": []}


def test_publish_raw_sends_the_payload_untouched(
    redis_url: str, subscriber: redis.client.PubSub
) -> None:
    with SandboxWrapper(redis_url=redis_url) as sandbox:
        receivers = sandbox.publish_raw("crm:acme:roles", b"{not json")
        message = _next_message(subscriber)

    assert receivers == 1
    assert message["data"] == b"{not json"


def test_without_redis_events_are_returned_but_not_published() -> None:
    sandbox = SandboxWrapper()

    event = sandbox.delete_user("acme", "user-789")

    assert event["eventType"] == "user-deleted"
    assert sandbox.publish_raw("crm:acme:users", "{}") == 0
    assert sandbox.events == [event]


# --- command line ------------------------------------------------------------------------------


def test_help_calls_it_a_development_tool(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sandbox_main(["--help"])

    assert exit_info.value.code == 0
    assert "Development tool" in capsys.readouterr().out


def test_command_serves_until_sigterm_and_exits_0(http: requests.Session) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "WRAPPER_API_TOKEN")},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[3]
        roles = http.get(f"{url}/api/roles", headers={"X-Tenant-ID": "acme"}, timeout=5)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    finally:
        process.kill() if process.poll() is None else None
        process.communicate()

    assert roles.status_code == 200
    assert code == 0
