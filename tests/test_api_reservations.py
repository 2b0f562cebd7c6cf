"""Reservations and leads over HTTP (live uvicorn, real Redis, PostgreSQL, sandbox Wrapper)."""

from __future__ import annotations

from typing import Any

import redis
from httpx import Client

from crmcache import holds
from crmcache.keyspace import TenantKeys
from tests.api_support import ACME, GLOBEX, lead_body
from tests.conftest import wait_until

pytest_plugins = ("tests.api_fixtures",)

KEYS = TenantKeys.of("acme")


def reserve(api: Client, key: str, headers: Any = ACME, **body: Any) -> Any:
    payload = {"userId": "user-456", "operation": "crm.leads.create", **body}
    return api.post(
        "/api/credits/reservations", json=payload, headers={**headers, "Idempotency-Key": key}
    )


def balance(api: Client, user: str = "user-456", headers: Any = ACME) -> Any:
    return api.get("/api/credits/balance", params={"userId": user}, headers=headers).json()


def test_a_reservation_holds_the_cost_then_commits_and_settles(
    api: Client, r: redis.Redis, wrapper: Any, worker: Any
) -> None:
    # When user-456 (100 credits) reserves the cost of a lead
    held = reserve(api, "res-1")

    # Then 201: 1 held, 99 available, and a deadline
    assert held.status_code == 201, held.text
    hold = held.json()
    assert (hold["amount"], hold["availableCredits"], hold["state"]) == (1, 99, "held")
    assert hold["expiresAt"].endswith("Z")
    assert balance(api) == {"userId": "user-456", "availableCredits": 99, "heldCredits": 1}

    # When it is committed (twice: a retry after a lost answer)
    path = f"/api/credits/reservations/{hold['holdId']}/commit"
    first = api.post(path, json={"resultRef": "deal-7"}, headers=ACME)
    again = api.post(path, json={"resultRef": "deal-7"}, headers=ACME)

    # Then it is charged once and the Wrapper gets it once
    assert first.status_code == again.status_code == 200, first.text
    assert first.json() == again.json() and first.json()["state"] == "committed"
    assert balance(api)["heldCredits"] == 0
    wait_until(lambda: wrapper.consumed, timeout=15, what="settlement")
    [(key, body)] = wrapper.consumed.items()
    assert key == first.json()["deductionId"] and body["amount"] == 1
    got = api.get(f"/api/credits/reservations/{hold['holdId']}", headers=ACME).json()
    assert (got["state"], got["resultRef"]) == ("committed", "deal-7")


def test_a_voided_reservation_gives_the_credits_back(api: Client) -> None:
    hold = reserve(api, "res-void", amount=5).json()

    voided = api.post(f"/api/credits/reservations/{hold['holdId']}/void", headers=ACME)

    assert voided.status_code == 200 and voided.json()["availableCredits"] == 100
    assert balance(api) == {"userId": "user-456", "availableCredits": 100, "heldCredits": 0}
    late = api.post(f"/api/credits/reservations/{hold['holdId']}/commit", headers=ACME)
    assert late.status_code == 409 and late.json()["error"] == "hold_closed"


def test_a_reserve_replays_and_refuses_what_it_cannot_do(api: Client, r: redis.Redis) -> None:
    first = reserve(api, "res-replay").json()
    again = reserve(api, "res-replay")
    assert again.status_code == 201 and again.json() == first
    assert again.headers["idempotent-replayed"] == "true"
    assert reserve(api, "res-replay", amount=3).status_code == 409  # another request
    assert reserve(api, "res-big", amount=1000).status_code == 402
    assert reserve(api, "res-op", operation="crm.nothing").status_code == 409
    assert reserve(api, "res-neg", amount=-1).status_code == 422
    assert reserve(api, "res-nobody", userId="nobody").status_code == 404
    missing = api.post("/api/credits/reservations/hold_nope/commit", headers=ACME)
    assert missing.status_code == 404 and missing.json()["error"] == "hold_not_found"


def test_another_tenants_reservation_and_lead_are_not_reachable(
    api: Client, lead_store: Any
) -> None:
    # Given a hold and a lead of acme
    hold = reserve(api, "iso-res").json()
    lead = api.post(
        "/api/leads", json=lead_body(), headers={**ACME, "Idempotency-Key": "iso-lead"}
    ).json()

    # When globex's key names their ids, then nothing is found and nothing changes
    for path in (f"/api/credits/reservations/{hold['holdId']}", f"/api/leads/{lead['leadId']}"):
        assert api.get(path, headers=GLOBEX).status_code == 404
    for action in ("commit", "void"):
        path = f"/api/credits/reservations/{hold['holdId']}/{action}"
        assert api.post(path, headers=GLOBEX).status_code == 404
    assert balance(api)["heldCredits"] == 1
    assert api.get(f"/api/leads/{lead['leadId']}", headers=ACME).status_code == 200


def test_a_lead_reads_back_from_the_database(api: Client) -> None:
    created = api.post(
        "/api/leads",
        json=lead_body(company="Initech"),
        headers={**ACME, "Idempotency-Key": "read-back"},
    ).json()

    got = api.get(f"/api/leads/{created['leadId']}", headers=ACME)

    assert got.status_code == 200, got.text
    body = got.json()
    assert body["leadId"] == created["leadId"] and body["userId"] == "user-456"
    assert body["leadData"]["company"] == "Initech" and body["creditsDeducted"] == 1
    assert api.get("/api/leads/lead_unknown", headers=ACME).status_code == 404


def test_a_retry_finishes_the_work_of_an_attempt_that_died_after_its_insert(
    api: Client, r: redis.Redis, lead_store: Any, store: Any, settings: Any
) -> None:
    from crmcache import credits, leads
    from crmcache.lead_store import Lead
    from crmcache.wrapper import WrapperClient

    # Given an attempt that reserved and wrote its lead, then died before committing
    body = lead_body()
    fingerprint = credits.fingerprint(["POST /api/leads", body["userId"], _as_dumped(body)])
    client = WrapperClient(settings)
    hold = holds.reserve(
        store, client, "acme", user_id="user-456", operation=leads.LEAD_OPERATION, amount=1,
        idempotency_key="died-1", timeout_s=30, ttl_s=86_400, request_fingerprint=fingerprint,
        result_ref=leads.new_lead_id(),
    )  # fmt: skip
    client.close()
    lead_store.insert(Lead("acme", hold.result_ref, "user-456", hold.hold_id, "1", {}, "t"))

    # When the client retries with the same key and body
    retry = api.post("/api/leads", json=body, headers={**ACME, "Idempotency-Key": "died-1"})

    # Then it gets the first attempt's lead, charged once
    assert retry.status_code == 201, retry.text
    assert retry.json()["leadId"] == hold.result_ref
    assert lead_store.count("acme") == lead_store.count("acme", charged=True) == 1
    assert holds.hold_status(store, "acme", hold.hold_id, ttl_s=60)["state"] == "committed"
    assert balance(api) == {"userId": "user-456", "availableCredits": 99, "heldCredits": 0}


def _as_dumped(body: dict[str, Any]) -> dict[str, Any]:
    """leadData as the route's model dumps it (every optional field, None included)."""
    from consumer.api.models import LeadData

    return LeadData(**body["leadData"]).model_dump(mode="json")


def test_without_its_database_the_api_answers_everything_but_leads(
    serve: Any, preload: Any, api_settings: Any
) -> None:
    from pydantic import SecretStr

    from ops.dev.redis_server import free_port

    # Given an API whose leads database does not answer
    preload("acme")
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/leads"
    settings = api_settings.model_copy(update={"database_url": SecretStr(nowhere)})
    with serve(settings) as api:
        # Then it starts and reads; a lead is a 503 that names the database, nothing held
        params = {"userId": "user-456", "permission": "crm.leads.create"}
        assert api.get("/api/permissions/check", params=params, headers=ACME).status_code == 200
        reply = api.post(
            "/api/leads", json=lead_body(), headers={**ACME, "Idempotency-Key": "nodb"}
        )
        assert reply.status_code == 503 and reply.json()["error"] == "database_unavailable"
        assert balance(api)["heldCredits"] == 1  # until the reconciler decides (no lead: void)
