"""Every endpoint's success and error answers, through the ASGI app, with the real read side,
a real Redis, the sandbox Wrapper over HTTP and (for settlement) the real worker."""

from __future__ import annotations

from typing import Any

import redis
from httpx import Client

from crmcache.keyspace import TenantKeys
from tests.api_support import ACME, GLOBEX, lead_body
from tests.conftest import wait_until

pytest_plugins = ("tests.api_fixtures",)

KEYS = TenantKeys.of("acme")


def is_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["message"]


# --- authentication ---------------------------------------------------------------------------


def test_a_request_without_a_key_is_401(api: Client) -> None:
    response = api.get("/api/permissions/check", params={"userId": "u", "permission": "p"})
    is_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_key_is_401(api: Client) -> None:
    params = {"userId": "user-456", "permission": "crm.leads.create"}
    for headers in (
        {"X-API-Key": "nope"},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic x"},
    ):
        is_error(
            api.get("/api/permissions/check", params=params, headers=headers), 401, "unauthorized"
        )


def test_keys_work_as_x_api_key_or_bearer_and_as_sha256_digests(api: Client) -> None:
    params = {"userId": "user-001", "permission": "crm.reports.export"}
    # acme's plain key in X-API-Key; globex's digest-configured key as a bearer token
    assert api.get("/api/permissions/check", params=params, headers=ACME).status_code == 200
    answer = api.get("/api/permissions/check", params=params, headers=GLOBEX)
    assert answer.status_code == 200 and answer.json()["authorized"] is True


# --- GET /api/credits/validate ----------------------------------------------------------------


def validate(api: Client, operation: str, user: str) -> Any:
    return api.get(
        "/api/credits/validate", params={"operation": operation, "userId": user}, headers=ACME
    )


def test_validate_answers_cost_balance_and_affordability(api: Client) -> None:
    # Given acme (crm.leads.create costs 1; user-456 has 100 at the Wrapper)
    # When validated twice
    first = validate(api, "crm.leads.create", "user-456")
    second = validate(api, "crm.leads.create", "user-456")

    # Then the answer is right, the balance was read through once and then cached
    assert first.status_code == 200
    body = first.json()
    assert body["operation"] == "crm.leads.create"
    assert (body["creditCost"], body["availableCredits"], body["canAfford"]) == (1, 100, True)
    assert body["cached"] is False and second.json()["cached"] is True
    assert isinstance(body["responseTimeMs"], float) and 0 <= body["responseTimeMs"] < 5000


def test_validate_says_when_the_user_cannot_afford_it(api: Client) -> None:
    # user-viewer has 0 credits; crm.reports.export costs 5
    body = validate(api, "crm.reports.export", "user-viewer").json()
    assert (body["creditCost"], body["availableCredits"], body["canAfford"]) == (5, 0, False)


def test_a_cost_of_zero_is_configured_and_affordable_with_no_credits(api: Client) -> None:
    response = validate(api, "crm.contacts.view", "user-viewer")
    assert response.status_code == 200
    assert (response.json()["creditCost"], response.json()["canAfford"]) == (0, True)


def test_validate_of_an_unconfigured_operation_is_404(api: Client) -> None:
    response = validate(api, "crm.nothing.here", "user-456")
    is_error(response, 404, "operation_not_configured")
    assert response.json()["operation"] == "crm.nothing.here"


def test_validate_of_an_unknown_user_is_404(api: Client) -> None:
    is_error(validate(api, "crm.leads.create", "nobody"), 404, "user_not_found")


def test_validate_without_parameters_is_422(api: Client) -> None:
    response = api.get("/api/credits/validate", params={"operation": "x"}, headers=ACME)
    is_error(response, 422, "invalid_request")
    assert response.json()["details"][0]["loc"] == ["query", "userId"]


# --- GET /api/permissions/check ---------------------------------------------------------------


def permission(api: Client, user: str, perm: str) -> Any:
    response = api.get(
        "/api/permissions/check", params={"userId": user, "permission": perm}, headers=ACME
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_permission_check_follows_roles_wildcards_and_status(api: Client) -> None:
    granted = permission(api, "user-456", "crm.leads.create")  # sales: crm.leads.*
    assert granted["authorized"] is True
    assert set(granted) >= {"userId", "permission", "authorized", "cached", "responseTimeMs"}
    assert permission(api, "user-456", "crm.reports.export")["authorized"] is False
    assert permission(api, "user-789", "crm.leads.create")["authorized"] is False  # suspended
    assert permission(api, "user-123", "anything.at.all")["authorized"] is True  # admin: *
    assert permission(api, "nobody", "crm.leads.create")["authorized"] is False


def test_permission_check_with_a_bad_parameter_is_422(api: Client) -> None:
    response = api.get(
        "/api/permissions/check", params={"userId": "has space", "permission": "p"}, headers=ACME
    )
    is_error(response, 422, "invalid_request")


# --- GET /api/users/{userId}/profile ----------------------------------------------------------


def test_profile_is_the_wrappers_plus_cache_fields(api: Client) -> None:
    first = api.get("/api/users/user-456/profile", headers=ACME)
    assert first.status_code == 200
    body = first.json()
    assert body["name"] == "Sam Seller" and body["userId"] == "user-456"
    assert body["stale"] is False and body["cacheExpiry"].endswith("Z")
    assert api.get("/api/users/user-456/profile", headers=ACME).json()["cached"] is True


def test_profile_of_an_unknown_user_is_404(api: Client) -> None:
    is_error(api.get("/api/users/nobody/profile", headers=ACME), 404, "user_not_found")


# --- POST /api/leads --------------------------------------------------------------------------


def post_lead(api: Client, key: str, body: Any = None, headers: Any = None) -> Any:
    return api.post(
        "/api/leads",
        json=lead_body() if body is None else body,
        headers={**(headers or ACME), "Idempotency-Key": key},
    )


def test_a_lead_is_created_charged_and_settled(
    api: Client, r: redis.Redis, wrapper: Any, worker: Any, lead_store: Any
) -> None:
    # When user-456 (100 credits, sales role) creates a lead
    response = post_lead(api, "lead-ok")

    # Then 201 with the lead id and the charge; the lead is stored
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["creditsDeducted"], body["remainingCredits"]) == (1, 99)
    assert body["leadId"].startswith("lead_")
    stored = lead_store.get("acme", body["leadId"])
    assert stored is not None and stored.charged and stored.user_id == "user-456"
    assert stored.lead_data["name"] == "Jane Prospect"
    assert "idempotent-replayed" not in response.headers
    # And the API enqueued the settlement: the Wrapper is charged once
    wait_until(lambda: wrapper.consumed, timeout=15, what="settlement")
    [(key, consumed)] = wrapper.consumed.items()
    assert key.startswith("ded_") and consumed["amount"] == 1
    wait_until(lambda: r.xlen(KEYS.credit_outbox) == 0, timeout=10, what="outbox empty")


def test_a_lead_without_the_permission_is_403(api: Client, lead_store: Any) -> None:
    for user in ("user-viewer", "user-789"):  # no crm.leads.create; suspended
        is_error(post_lead(api, f"k-{user}", lead_body(user)), 403, "forbidden")
    assert lead_store.count("acme") == 0


def test_a_lead_without_enough_credits_is_402(api: Client, r: redis.Redis, lead_store: Any) -> None:
    r.set(KEYS.balance("user-456"), "0")
    response = post_lead(api, "k-broke")
    is_error(response, 402, "insufficient_credits")
    assert (response.json()["availableCredits"], response.json()["creditCost"]) == (0, 1)
    assert lead_store.count("acme") == 0


def test_a_lead_when_lead_creation_is_not_configured_is_409(
    serve: Any, preload: Any, wrapper: Any, r: redis.Redis, lead_store: Any
) -> None:
    # Given acme without a crm.leads.create cost
    wrapper.delete_credit_cost("acme", "crm.leads.create", publish=False)
    preload("acme")
    with serve() as client:
        # When a lead is created, then 409 and nothing is charged
        is_error(post_lead(client, "k-unconfigured"), 409, "operation_not_configured")
    assert lead_store.count("acme") == 0 and not r.exists(KEYS.balance("user-456"))


def test_a_lead_costing_zero_is_created_without_a_charge(
    serve: Any, preload: Any, wrapper: Any, r: redis.Redis
) -> None:
    # Given lead creation costs 0 for acme
    wrapper.set_credit_cost("acme", "crm.leads.create", 0, publish=False)
    preload("acme")
    with serve() as client:
        response = post_lead(client, "k-free")
    # Then 201, nothing deducted, nothing to settle
    assert response.status_code == 201, response.text
    assert (response.json()["creditsDeducted"], response.json()["remainingCredits"]) == (0, 100)
    assert not r.exists(KEYS.credit_outbox)


def test_an_invalid_lead_is_422(api: Client, lead_store: Any) -> None:
    bad_bodies = [
        {"userId": "user-456"},
        {"userId": "user-456", "leadData": {}},
        lead_body(name="x" * 201),
        lead_body(email="not-an-email"),
        lead_body(unexpected="field"),
        {**lead_body(), "tenantId": "globex"},
        lead_body(customFields={f"f{i}": i for i in range(51)}),
        [],
        "text",
    ]
    for i, body in enumerate(bad_bodies):
        is_error(post_lead(api, f"k-bad-{i}", body), 422, "invalid_request")
    assert lead_store.count("acme") == 0


def test_a_lead_needs_an_idempotency_key(api: Client) -> None:
    response = api.post("/api/leads", json=lead_body(), headers=ACME)
    is_error(response, 422, "invalid_request")
    assert response.json()["details"][0]["loc"] == ["header", "Idempotency-Key"]
    is_error(post_lead(api, "has space"), 422, "invalid_request")


def test_a_body_that_is_not_json_is_422_and_an_oversized_one_413(api: Client) -> None:
    headers = {**ACME, "Idempotency-Key": "k-raw", "Content-Type": "application/json"}
    is_error(api.post("/api/leads", content=b"{not json", headers=headers), 422, "invalid_request")
    huge = b'{"userId": "user-456", "leadData": {"name": "' + b"x" * 70_000 + b'"}}'
    is_error(api.post("/api/leads", content=huge, headers=headers), 413, "body_too_large")


def test_a_replayed_key_returns_the_first_answer_and_a_changed_body_is_409(
    api: Client, r: redis.Redis, lead_store: Any
) -> None:
    first = post_lead(api, "k-replay")
    again = post_lead(api, "k-replay")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    is_error(
        post_lead(api, "k-replay", lead_body(name="Someone Else")), 409, "idempotency_key_reused"
    )
    assert lead_store.count("acme") == 1 and r.get(KEYS.balance("user-456")) == b"99"


# --- the seed's usage example and operations --------------------------------------------------


def test_test_credit_check_returns_the_seed_example_with_metrics(api: Client) -> None:
    response = api.get("/api/test-credit-check", headers=ACME)
    assert response.status_code == 200
    body = response.json()
    assert (body["operation"], body["userId"], body["cost"]) == ("crm.leads.create", "user-456", 1)
    assert body["canAfford"] is True and body["hasPermission"] is True
    assert body["profile"]["name"] == "Sam Seller"
    assert isinstance(body["metrics"], dict) and body["metrics"]
    assert (
        api.get("/api/test-credit-check", params={"userId": "user-viewer"}, headers=ACME).json()[
            "hasPermission"
        ]
        is False
    )


def test_healthz_needs_no_key(api: Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_only_when_every_served_tenant_is_ready(
    serve: Any, preload: Any, r: redis.Redis
) -> None:
    with serve() as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["tenants"] == {"acme": False, "globex": False}
        preload()
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] is True


def test_a_tenant_never_loaded_answers_503(serve: Any, r: redis.Redis) -> None:
    with serve() as client:
        response = client.get(
            "/api/permissions/check", params={"userId": "user-456", "permission": "p"}, headers=ACME
        )
    is_error(response, 503, "tenant_not_ready")


def test_metrics_are_prometheus_text_with_request_timings(api: Client) -> None:
    api.get(
        "/api/permissions/check", params={"userId": "user-456", "permission": "p"}, headers=ACME
    )
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'route="/api/permissions/check"' in response.text
    assert "crmcache_http_request_duration_seconds_bucket" in response.text


def test_unknown_routes_and_methods_answer_json(api: Client) -> None:
    is_error(api.get("/nope", headers=ACME), 404, "not_found")
    is_error(api.delete("/api/leads", headers=ACME), 405, "method_not_allowed")


def test_the_openapi_document_lists_every_endpoint(api: Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {
        "/api/credits/validate",
        "/api/users/{userId}/profile",
        "/api/permissions/check",
        "/api/leads",
        "/api/test-credit-check",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)


def test_a_chunked_body_over_the_limit_is_413(api: Client) -> None:
    def chunks() -> Any:
        yield b'{"userId": "user-456", "leadData": {"name": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}}'

    headers = {**ACME, "Idempotency-Key": "k-chunked", "Content-Type": "application/json"}
    is_error(api.post("/api/leads", content=chunks(), headers=headers), 413, "body_too_large")
