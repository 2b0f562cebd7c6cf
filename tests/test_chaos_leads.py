"""Leads under chaos, with real processes: 1,000 lead requests across 50 users while the API
process is SIGKILLed twice and PostgreSQL is restarted once. Clients retry with the same
Idempotency-Key, as a real client does. After the reconciler: leads = committed charges =
Wrapper consumes (by idempotency key), no negative balance, no hold left open."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from config.celery import CREDITS_QUEUE, celery_config
from config.settings import load_settings
from crmcache.keyspace import TenantKeys
from crmcache.lead_store import LeadStore
from crmcache.preload import preload_tenant
from crmcache.store import Store
from crmcache.wrapper import WrapperClient
from ops.dev.redis_server import free_port
from tests import postgres
from tests.api_support import ACME, lead_body
from tests.conftest import wait_until
from tests.processes import BIN, Proc, running, worker_args

USERS = [f"chaos-{i:02d}" for i in range(50)]
REQUESTS = 1000
CREDITS_EACH = 25
"""More than the 20 leads each user asks for: every request can succeed."""
KEYS = TenantKeys.of("acme")


@pytest.fixture
def own_postgres() -> Iterator[tuple[postgres.PostgresServer, str]]:
    """A PostgreSQL server of this test's own, so that it can be restarted."""
    if os.environ.get("CRM_TEST_POSTGRES_URL"):
        pytest.skip("CRM_TEST_POSTGRES_URL given: this test restarts a server of its own")
    try:
        server = postgres.PostgresServer().start()
    except (postgres.PostgresUnavailable, OSError) as exc:
        pytest.fail(f"cannot start a PostgreSQL server to restart: {exc}")
    database = postgres.ThrowawayDatabase(server.url)
    yield server, database.url
    server.cleanup()


class Clients:
    """1,000 lead requests on 16 threads; each retries with its key until it gets 201 or 402."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = 0
        self.attempts = 0
        self.answers: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(self.one, range(REQUESTS)))

    def one(self, i: int) -> None:
        key, user = f"chaos-lead-{i}", USERS[i % len(USERS)]
        headers = {**ACME, "Idempotency-Key": key}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for _attempt in range(400):
                with self.lock:
                    self.attempts += 1
                try:
                    reply = client.post("/api/leads", json=lead_body(user), headers=headers)
                except httpx.TransportError:
                    time.sleep(0.1)
                    continue
                if reply.status_code in (201, 402):
                    with self.lock:
                        self.done += 1
                        if reply.status_code == 201:
                            self.answers[key] = reply.json()
                        else:
                            self.refused[key] = reply.status_code
                    return
                assert reply.status_code == 503, reply.text  # never a wrong answer
                time.sleep(0.05)
        raise AssertionError(f"{key} never succeeded")


def api_proc(env: dict[str, str], port: int, log: Path) -> Proc:
    args = [str(BIN / "crmcache"), "api", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc(args, env, log)
    wait_until(lambda: _healthy(port), timeout=30, what=lambda: proc.output()[-2000:])
    return proc


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_leads_survive_api_kills_and_a_database_restart(
    tmp_path: Path,
    env: dict[str, str],
    r: redis.Redis,
    wrapper: Any,
    own_postgres: tuple[postgres.PostgresServer, str],
) -> None:
    server, database_url = own_postgres
    # Given 50 sales users with 25 credits each at the Wrapper, acme preloaded
    for user in USERS:
        wrapper.set_user("acme", user, status="active", roles=["sales"], publish=False)
        wrapper.top_up_credits("acme", user, CREDITS_EACH, publish=False)
    # A broker database of its own: the session's in-process worker must not take these tasks.
    broker = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + "/2"
    redis.Redis.from_url(broker).flushdb()
    stack_env = {
        **os.environ,
        **env,
        "CELERY_BROKER_URL": broker,
        "CRM_DATABASE_URL": database_url,
        "CRM_API_KEYS": "acme:acme-secret-key",
        "CRM_HOLD_TIMEOUT": "2",
        "CRM_RECONCILE_INTERVAL": "2",
        "CRM_SETTLE_SWEEP_INTERVAL": "3",
        "CRM_SETTLE_CLAIM_IDLE": "5",
        "CRM_TENANTS": "acme",
    }
    settings = load_settings(CRM_DATABASE_URL=database_url, CELERY_BROKER_URL=broker)
    client = WrapperClient(settings)
    preload_tenant(Store(r), client, "acme")
    client.close()
    port = free_port()
    worker = Proc(worker_args(concurrency=4), stack_env, tmp_path / "worker.log")
    beat_args = [str(BIN / "celery"), "-A", "tasks", "beat", "-s", str(tmp_path / "beat")]
    beat = Proc(beat_args, stack_env, tmp_path / "beat.log")
    apis = [api_proc(stack_env, port, tmp_path / "api-0.log")]
    clients = Clients(f"http://127.0.0.1:{port}")
    load = threading.Thread(target=clients.run)

    with running(worker, beat):
        try:
            # When the requests run while the API is killed twice and PostgreSQL restarts once
            load.start()
            for at, chaos in ((200, "kill"), (500, "restart-db"), (750, "kill")):
                wait_until(lambda at=at: clients.done >= at, timeout=90, what=f"{at} done")
                if chaos == "kill":
                    apis[-1].signal(signal.SIGKILL)
                    apis.append(api_proc(stack_env, port, tmp_path / f"api-{len(apis)}.log"))
                else:
                    server.restart()
            load.join(timeout=120)
            assert not load.is_alive(), "the clients did not finish"

            # And the reconciler has run past every hold's deadline and the grace for leads
            time.sleep(12)
            reconcile = Celery("chaos-test")
            reconcile.conf.update(celery_config(settings))
            reconcile.send_task(
                "crmcache.reconcile_credits", kwargs={"guard": False}, queue=CREDITS_QUEUE
            )
            lead_store = LeadStore(database_url)
            wait_until(
                lambda: lead_store.count("acme", charged=False) == 0,
                timeout=30,
                what="every lead marked charged",
            )
            wait_until(lambda: r.xlen(KEYS.credit_outbox) == 0, timeout=60, what="settled")
        finally:
            for api in apis:
                api.stop()

    # Then every request got its lead, and leads = committed charges = Wrapper consumes
    committed = _committed_lead_holds(r)
    leads_in_db = lead_store.count("acme")
    consumed = {k for k, body in wrapper.consumed.items() if body["userId"] in USERS}
    print(
        f"\nchaos: {clients.attempts} attempts for {REQUESTS} requests, {len(apis) - 1} API "
        f"kills, 1 PostgreSQL restart; {leads_in_db} leads, {len(committed)} committed "
        f"charges, {len(consumed)} Wrapper consumes"
    )
    assert len(clients.answers) == REQUESTS and not clients.refused
    assert {a["leadId"] for a in clients.answers.values()} == set(committed)
    assert leads_in_db == len(committed) == len(consumed) == REQUESTS
    assert set(committed.values()) == consumed
    # And no balance went negative, nothing is held, and every credit is accounted for
    for user in USERS:
        available = float(r.get(KEYS.balance(user)) or 0)
        assert available == CREDITS_EACH - 20 >= 0
        assert not r.exists(KEYS.holds(user))
        assert wrapper.state.credits("acme", user)["available"] == CREDITS_EACH - 20
    assert r.zcard(KEYS.hold_users) == 0
    lead_store.close()


def _committed_lead_holds(r: redis.Redis) -> dict[str, str]:
    """leadId -> deductionId of every committed lead hold of acme."""
    found: dict[str, str] = {}
    for key in r.scan_iter(match="crm:{acme}:hold:*", count=1000):
        state, ref, deduction = r.hmget(key, "state", "resultRef", "deductionId")
        if state == b"committed" and ref and ref.startswith(b"lead_"):
            assert ref.decode() not in found, "two charges for one lead"
            found[ref.decode()] = (deduction or b"").decode()
    return found
