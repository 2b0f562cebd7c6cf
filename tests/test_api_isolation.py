"""Tenant isolation: the API key alone decides the tenant; nothing else a caller sends (user ids
of another tenant, tenant-looking headers, query parameters, body fields, path tricks) reaches
another tenant's data."""

from __future__ import annotations

import pytest
import redis
from httpx import Client

from crmcache.keyspace import TenantKeys
from tests.api_support import ACME, GLOBEX, lead_body

TENANT_HEADERS = {
    "X-Tenant-ID": "globex",
    "X-Tenant": "globex",
    "Tenant": "globex",
    "X-Forwarded-Host": "globex.example",
}

pytest_plugins = ("tests.api_fixtures",)


def globex_keys(r: redis.Redis) -> set[bytes]:
    return set(r.scan_iter(match="crm:{globex}*", count=1000))


def test_acme_key_with_a_user_id_both_tenants_have_sees_only_acme(api: Client) -> None:
    # user-456 is acme's active salesperson with 100 credits and globex's suspended intern
    headers = {**ACME, **TENANT_HEADERS}
    profile = api.get("/api/users/user-456/profile", headers=headers).json()
    assert profile["name"] == "Sam Seller"
    allowed = api.get(
        "/api/permissions/check",
        params={"userId": "user-456", "permission": "crm.leads.create", "tenantId": "globex"},
        headers=headers,
    ).json()
    assert allowed["authorized"] is True  # at globex this user is suspended
    credits = api.get(
        "/api/credits/validate",
        params={"operation": "crm.leads.create", "userId": "user-456", "tenant": "globex"},
        headers=headers,
    ).json()
    assert (credits["creditCost"], credits["availableCredits"]) == (1, 100)  # globex: 2 and 7


def test_acme_key_with_a_globex_only_user_finds_nothing(api: Client) -> None:
    # user-001 exists only at globex (an admin there)
    headers = {**ACME, **TENANT_HEADERS}
    assert api.get("/api/users/user-001/profile", headers=headers).status_code == 404
    check = api.get(
        "/api/permissions/check",
        params={"userId": "user-001", "permission": "crm.reports.export"},
        headers=headers,
    ).json()
    assert check["authorized"] is False
    validate = api.get(
        "/api/credits/validate",
        params={"operation": "crm.leads.create", "userId": "user-001"},
        headers=headers,
    )
    assert validate.status_code == 404
    lead = api.post(
        "/api/leads",
        json=lead_body("user-001"),
        headers={**headers, "Idempotency-Key": "iso-1"},
    )
    assert lead.status_code == 403


def test_a_lead_with_tenant_headers_charges_the_keys_tenant_only(
    api: Client, r: redis.Redis
) -> None:
    # Given globex's data as it is before
    before = globex_keys(r)
    globex_balance = r.get(TenantKeys.of("globex").balance("user-456"))

    # When acme's key creates a lead while naming globex everywhere it can
    response = api.post(
        "/api/leads",
        params={"tenantId": "globex"},
        json=lead_body(),
        headers={**ACME, **TENANT_HEADERS, "Idempotency-Key": "iso-2"},
    )

    # Then acme was charged, and globex's keys are exactly as they were
    assert response.status_code == 201
    assert r.get(TenantKeys.of("acme").balance("user-456")) == b"99"
    assert r.get(TenantKeys.of("globex").balance("user-456")) == globex_balance
    assert globex_keys(r) == before


def test_a_body_naming_another_tenant_is_refused(api: Client) -> None:
    body = {**lead_body(), "tenantId": "globex"}
    response = api.post("/api/leads", json=body, headers={**ACME, "Idempotency-Key": "iso-3"})
    assert response.status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/..%2F..%2Fglobex%2Fuser-001/profile",
        "/api/users/%7Bglobex%7D:user-001/profile",
        "/api/users/crm:{globex}:ref:profile:user-001/profile",
        "/globex/api/users/user-001/profile",
        "/api/users/user-001/profile/../../../globex",
        "/api//users/user-001/profile",
    ],
)
def test_path_tricks_never_reach_another_tenant(api: Client, r: redis.Redis, path: str) -> None:
    before = globex_keys(r)
    response = api.get(path, headers=ACME)
    assert response.status_code in (404, 422), response.text
    assert "Hank" not in response.text  # globex's user-001
    assert globex_keys(r) == before


def test_a_globex_key_sees_globex(api: Client) -> None:
    profile = api.get("/api/users/user-456/profile", headers=GLOBEX).json()
    assert profile["name"] == "Gina Globex"
    lead = api.post(
        "/api/leads",
        json=lead_body("user-456"),
        headers={**GLOBEX, "Idempotency-Key": "iso-4"},
    )
    assert lead.status_code == 403  # suspended at globex


def test_the_same_idempotency_key_in_two_tenants_is_two_leads(api: Client, r: redis.Redis) -> None:
    # Given acme's user-456 and globex's admin user-001 each create a lead with the same key
    acme = api.post("/api/leads", json=lead_body(), headers={**ACME, "Idempotency-Key": "same"})
    globex = api.post(
        "/api/leads", json=lead_body("user-001"), headers={**GLOBEX, "Idempotency-Key": "same"}
    )
    # Then each tenant has its own lead and charge
    assert acme.status_code == globex.status_code == 201
    assert acme.json()["leadId"] != globex.json()["leadId"]
    assert globex.json()["creditsDeducted"] == 2
