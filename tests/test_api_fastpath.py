"""Answers without I/O: the reader's ``peek_*`` (near-cache only, never guessing), balances held
by version (any charge or top-up anywhere drops them), and ``HotReads``, which answers the two
hot endpoints in front of FastAPI only when the near-cache can, with the routes' own JSON."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from consumer import SmartCRMConsumer
from consumer.api.hot import HotReads
from crmcache import credits
from crmcache.events import Event
from crmcache.keyspace import TenantKeys
from crmcache.wrapper import WrapperClient
from tests.api_support import ACME, ACME_KEY, GLOBEX
from tests.conftest import wait_until

pytest_plugins = ("tests.api_fixtures",)

KEYS = TenantKeys.of("acme")
VALIDATE = "/api/credits/validate?operation=crm.leads.create&userId=user-456"
PERMISSION = "/api/permissions/check?userId=user-456&permission=crm.leads.create"


@pytest.fixture
def reader(settings: Any, preload: Any, store: Any) -> Iterator[SmartCRMConsumer]:
    preload("acme")
    settings = settings.model_copy(update={"near_cache_staleness_ms": 60_000})
    consumer = SmartCRMConsumer("acme", settings=settings)
    consumer.initialize()
    # Its change notifications flow, and the confirmation that follows the subscription is
    # done: a version check racing a test's write would see a version ahead of the
    # notifications and (rightly) start a new generation.
    wait_until(
        lambda: consumer.cache.listening,
        what="the reader's subscription",
    )
    time.sleep(0.3)
    yield consumer
    consumer.shutdown()


def hold_balance(store: Any, reader: SmartCRMConsumer, user_id: str) -> bool:
    """Read the balance as the API does (balance_peek.lua) and offer it to the near-cache."""
    reader.get_user_credits(user_id)  # read through from the Wrapper into Redis
    raw, version, epoch = store.script("balance_peek")(keys=[KEYS.balance(user_id), KEYS.meta])
    return reader.keep_user_credits(user_id, credits.as_number(raw), int(version), epoch)


# --- the reader's peeks -----------------------------------------------------------------------


def test_a_near_cache_hit_is_answered_without_io(reader: SmartCRMConsumer) -> None:
    cost = reader.peek_credit_cost_detail("crm.leads.create")
    check = reader.peek_permission_detail("user-456", "crm.leads.create")
    assert cost is not None and (cost.cost, cost.source) == (1, "near-cache")
    assert check is not None and check.authorized and check.source == "near-cache"


def test_what_the_near_cache_lacks_is_not_peeked(reader: SmartCRMConsumer) -> None:
    assert reader.peek_permission_detail("nobody", "crm.leads.create") is None
    assert reader.peek_credit_cost_detail("crm.unknown.op") is None
    assert reader.peek_user_credits("user-456") is None  # never read


def test_an_untrusted_near_cache_is_never_peeked(reader: SmartCRMConsumer, store: Any) -> None:
    assert hold_balance(store, reader, "user-456")
    # Given a near-cache whose confirmation lapsed (as after CRM_NEAR_CACHE_STALENESS_MS)
    reader.cache.on_disconnect()  # what a lost notification connection does: distrust copies
    # Then nothing is answered from it
    assert reader.peek_credit_cost_detail("crm.leads.create") is None
    assert reader.peek_permission_detail("user-456", "crm.leads.create") is None
    assert reader.peek_user_credits("user-456") is None


def test_a_held_balance_is_dropped_by_a_charge_anywhere_and_costs_stay_warm(
    reader: SmartCRMConsumer, store: Any, wrapper: Any, settings: Any
) -> None:
    # Given user-456's balance (100) held at the current version
    assert hold_balance(store, reader, "user-456")
    assert reader.peek_user_credits("user-456") == 100
    # When another process charges the user (the Lua step bumps and announces the version)
    client = WrapperClient(settings)
    try:
        charged = credits.deduct(
            store,
            client,
            "acme",
            user_id="user-456",
            operation="crm.leads.create",
            amount=1,
            idempotency_key=str(uuid.uuid4()),
        )
    finally:
        client.close()
    assert charged.remaining == 99
    # Then the held balance is dropped, while costs and permissions stay in the near-cache
    wait_until(lambda: reader.peek_user_credits("user-456") is None, what="balance dropped")
    assert reader.peek_credit_cost_detail("crm.leads.create") is not None
    assert reader.peek_permission_detail("user-456", "crm.leads.create") is not None
    # ... and the next read holds the new balance
    assert hold_balance(store, reader, "user-456")
    assert reader.peek_user_credits("user-456") == 99


def test_a_top_up_event_drops_held_balances(reader: SmartCRMConsumer, store: Any) -> None:
    assert hold_balance(store, reader, "user-456")
    event = Event(
        tenant="acme",
        stream="users",
        event_type="user-credits-changed",
        data={"userId": "user-456", "delta": 5},
        seq=int(store.redis.incr(KEYS.seq)),
        event_id="top-up-1",
    )
    store.apply_events("acme", [event])
    wait_until(lambda: reader.peek_user_credits("user-456") is None, what="balance dropped")
    assert hold_balance(store, reader, "user-456")
    assert reader.peek_user_credits("user-456") == 105


def test_a_balance_read_at_another_version_is_not_held(
    reader: SmartCRMConsumer, store: Any
) -> None:
    reader.get_user_credits("user-456")
    raw, version, epoch = store.script("balance_peek")(keys=[KEYS.balance("user-456"), KEYS.meta])
    assert not reader.keep_user_credits("user-456", 100, int(version) + 1, epoch)  # read ahead
    assert not reader.keep_user_credits("user-456", 100, int(version), b"another-epoch")
    assert reader.peek_user_credits("user-456") is None


# --- HotReads in front of the routes ----------------------------------------------------------


class Passed:
    """The app behind HotReads, counting what it had to answer."""

    def __init__(self, app: Any) -> None:
        self.app, self.count = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.count += 1
        await self.app(scope, receive, send)


def hot_layer(app: Any) -> HotReads:
    app.middleware_stack = app.build_middleware_stack()
    layer = app.middleware_stack
    while not isinstance(layer, HotReads):
        layer = layer.app
    return layer


def exchange(app: Any, requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    """The requests in order through the whole ASGI app, its service started as in lifespan."""

    async def run() -> list[httpx.Response]:
        service = app.state.service
        await service.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return [await client.get(path, headers=headers) for path, headers in requests]
        finally:
            await service.stop()

    return asyncio.run(run())


def without_time(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert isinstance(body.pop("responseTimeMs"), float)
    return body


@pytest.mark.parametrize(
    ("path", "routed"),
    [(VALIDATE, 2), (PERMISSION, 1)],
    ids=["validate", "permission"],
)
def test_hot_reads_answer_what_the_route_answers_once_the_near_cache_holds_it(
    make_app: Any, preload: Any, wrapper: Any, path: str, routed: int
) -> None:
    preload("acme")
    app = make_app()
    hot = hot_layer(app)
    passed = hot.app = Passed(hot.app)
    # The route answers until the near-cache holds the answer: the first request builds the
    # reader (validate: and reads the balance through from the Wrapper; the second reads it
    # from Redis, and that read is held)
    responses = exchange(app, [(path, ACME)] * (routed + 2))
    assert passed.count == routed
    # Then the same answers come from the hot layer
    assert {response.status_code for response in responses} == {200}
    # (the route's last answer: the first validate says cached false, just read through)
    route_answer, *hot_answers = responses[routed - 1 :]
    assert all(without_time(hot) == without_time(route_answer) for hot in hot_answers)
    hot_answer = hot_answers[-1]
    assert hot_answer.headers["content-type"] == route_answer.headers["content-type"]
    assert int(hot_answer.headers["content-length"]) == len(hot_answer.content)


def test_hot_reads_count_in_the_request_metrics(make_app: Any, preload: Any, wrapper: Any) -> None:
    preload("acme")
    app = make_app()
    hot = hot_layer(app)
    passed = hot.app = Passed(hot.app)
    exchange(app, [(PERMISSION, ACME)] * 3)
    assert passed.count == 1
    metrics = app.state.service.metrics.render().decode()
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("crmcache_http_request_duration_seconds_count")
        and 'route="/api/permissions/check"' in line
        and 'status="200"' in line
    )
    assert line.endswith(" 3.0")


PASSED_ON = [
    ("no key", PERMISSION, {}, 401),
    ("unknown key", PERMISSION, {"X-API-Key": "nope"}, 401),
    ("missing parameter", "/api/permissions/check?userId=user-456", ACME, 422),
    ("invalid parameter", "/api/permissions/check?userId=a%20b&permission=x", ACME, 422),
    ("newline in a parameter", "/api/permissions/check?userId=u%0A&permission=x", ACME, 422),
    ("unknown user", "/api/permissions/check?userId=nobody&permission=x", ACME, 200),
    ("not configured", "/api/credits/validate?operation=crm.nope&userId=user-456", ACME, 404),
]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [case[1:] for case in PASSED_ON],
    ids=[case[0] for case in PASSED_ON],
)
def test_what_hot_reads_cannot_answer_goes_to_the_route(
    make_app: Any, preload: Any, wrapper: Any, path: str, headers: dict[str, str], status: int
) -> None:
    preload()
    app = make_app()
    hot = hot_layer(app)
    passed = hot.app = Passed(hot.app)
    # Given warm readers of both tenants (their first requests went to the route)
    exchange(app, [(PERMISSION, ACME), (PERMISSION, GLOBEX)])
    assert passed.count == 2
    # When a request the near-cache cannot answer arrives
    response = exchange(app, [(path, headers)])[0]
    # Then the route answered it
    assert passed.count == 3
    assert response.status_code == status


def test_the_key_decides_the_tenant_on_the_hot_path(
    make_app: Any, preload: Any, wrapper: Any
) -> None:
    preload()
    app = make_app()
    hot = hot_layer(app)
    passed = hot.app = Passed(hot.app)
    tricks = {**GLOBEX, "X-Tenant-ID": "acme", "X-API-Key": "not-a-key"}
    acme, globex, tricked = exchange(
        app, [(PERMISSION, ACME), (PERMISSION, GLOBEX), (PERMISSION, tricks)]
    )
    assert acme.json()["authorized"] is True
    assert globex.json()["authorized"] is False
    assert tricked.status_code == 401  # X-API-Key wins over Bearer, and it is unknown
    acme_again, globex_again = exchange(
        app, [(PERMISSION, {"X-API-Key": ACME_KEY}), (PERMISSION, GLOBEX)]
    )
    assert passed.count == 3  # the last two came from the hot layer
    assert without_time(acme_again) == without_time(acme)
    assert without_time(globex_again) == without_time(globex)
