"""Redis SIGKILLed and restarted empty, ten times, while leads, credit checks, permission
checks, events and settlement are in flight.

Every part is a real process (Redis, a Celery worker, the subscriber, the HTTP API on uvicorn)
and the Wrapper is the sandbox. A cache that lost its data may answer "unavailable" (503) but
never "not found" (404), and never a wrong 200: the answers below are fixed by the sandbox's
data, which does not change during the test.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer, free_port
from sandbox import SandboxWrapper
from sandbox.state import default_data
from tests.api_support import ACME, API_KEYS, lead_body
from tests.conftest import TEST_ENV, wait_until
from tests.processes import BIN, Proc, running, subscriber_args

pytestmark = pytest.mark.slow

KEYS = TenantKeys.of("acme")
ROUNDS = 10
TICK = "crm.chaos.tick"
"""An operation whose cost the test keeps changing, so that apply_events is always in flight."""

PERMISSIONS = {  # (user, permission) -> the sandbox's answer
    ("user-456", "crm.leads.create"): True,
    ("user-123", "crm.reports.export"): True,
    ("user-789", "crm.leads.create"): False,  # suspended
    ("user-viewer", "crm.leads.create"): False,  # no such grant
}
KOMBU_CRASH = "'NoneType' object has no attribute 'hostname'"
"""How the worker dies when kombu closes a channel whose broker connection is gone."""
LEAD_USERS = {"user-456": 201, "user-viewer": 403}
"""Who asks for leads, and the one answer besides 503 that is right for them."""


def sample_data() -> dict[str, Any]:
    """The bundled sample, with credits enough for every lead the test makes."""
    data = default_data()
    for user in data["tenants"]["acme"]["users"]:
        user["credits"] = 10_000_000
    return data


class Answers:
    """Every HTTP answer of the load, by endpoint and status, and the wrong ones in full."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, int]] = Counter()
        self.wrong: list[str] = []

    def record(self, endpoint: str, status: int, problem: str | None) -> None:
        with self.lock:
            self.counts[endpoint, status] += 1
            if problem is not None:
                self.wrong.append(f"{endpoint} {status}: {problem}")


def judge_validate(reply: httpx.Response) -> str | None:
    if reply.status_code == 503:
        return None
    body = reply.json()
    if reply.status_code != 200:
        return str(body)
    available = body["availableCredits"]
    if body["creditCost"] != 1 or available < 0 or body["canAfford"] != (available >= 1):
        return f"wrong answer {body}"
    return None


def judge_permission(expected: bool) -> Callable[[httpx.Response], str | None]:
    def judge(reply: httpx.Response) -> str | None:
        if reply.status_code == 503:
            return None
        body = reply.json()
        if reply.status_code != 200 or body["authorized"] is not expected:
            return f"expected authorized={expected}: {body}"
        return None

    return judge


def judge_lead(expected: int) -> Callable[[httpx.Response], str | None]:
    def judge(reply: httpx.Response) -> str | None:
        if reply.status_code in (503, expected):
            if reply.status_code == 201 and reply.json()["creditsDeducted"] != 1:
                return f"charged the wrong amount: {reply.json()}"
            return None
        return f"expected {expected} or 503: {reply.text[:300]}"

    return judge


class Load:
    """Threads that keep calling the API until stopped; each answer is judged at once."""

    def __init__(self, url: str, answers: Answers) -> None:
        self.url = url
        self.answers = answers
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> Load:
        self._spawn("validate", self._validate)
        self._spawn("permissions", self._permissions)
        for user, expected in LEAD_USERS.items():
            self._spawn(f"leads {user}", lambda c, u=user, e=expected: self._lead(c, u, e))
        return self

    def _spawn(self, name: str, call: Callable[[httpx.Client], None]) -> None:
        def loop() -> None:
            with httpx.Client(base_url=self.url, headers=ACME, timeout=15) as client:
                while not self.stopping.is_set():
                    try:
                        call(client)
                    except httpx.TransportError as exc:  # the API process itself is checked
                        self.answers.record(name, 0, f"no answer: {exc!r}")
                        time.sleep(0.1)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _validate(self, client: httpx.Client) -> None:
        params = {"operation": "crm.leads.create", "userId": "user-456"}
        reply = client.get("/api/credits/validate", params=params)
        self.answers.record("validate", reply.status_code, judge_validate(reply))

    def _permissions(self, client: httpx.Client) -> None:
        for (user, permission), expected in PERMISSIONS.items():
            params = {"userId": user, "permission": permission}
            reply = client.get("/api/permissions/check", params=params)
            self.answers.record("permission", reply.status_code, judge_permission(expected)(reply))

    def _lead(self, client: httpx.Client, user: str, expected: int) -> None:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        reply = client.post("/api/leads", json=lead_body(user), headers=key)
        self.answers.record(f"lead {user}", reply.status_code, judge_lead(expected)(reply))
        time.sleep(0.005)  # leads are the heaviest request: leave the cores to the rest

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=20)


class Ticker:
    """Changes TICK's cost at the Wrapper every few milliseconds (each change is an event)."""

    def __init__(self, wrapper: SandboxWrapper) -> None:
        self.wrapper = wrapper
        self.values = itertools.count(1)
        self.last = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(0.02):
            self.tick()

    def tick(self) -> int:
        value = next(self.values)
        try:
            self.wrapper.set_credit_cost("acme", TICK, value)
        except Exception:  # PUBLISH failed while Redis was down: the next resync heals it
            pass
        self.last = value
        return value

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A private Redis and sandbox Wrapper, and the environment of every process."""
    server = RedisServer().start()
    wrapper = SandboxWrapper(sample_data(), redis_url=server.url, token="test-token").start()
    api_port = free_port()
    env = {
        **os.environ,
        **TEST_ENV,
        "REDIS_URL": server.url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
        "WRAPPER_API_URL": wrapper.url,
        "WRAPPER_API_TOKEN": "test-token",
        "CRM_TENANTS": "acme",
        "CRM_API_KEYS": API_KEYS,
        "CRM_LOG_LEVEL": "INFO",
    }
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        yield {
            "server": server,
            "wrapper": wrapper,
            "env": env,
            "r": client,
            "tmp": tmp_path,
            "api": f"http://127.0.0.1:{api_port}",
            "api_port": api_port,
        }
    finally:
        client.close()
        wrapper.stop()
        server.cleanup()


def kill_and_restart_empty(server: RedisServer) -> None:
    """SIGKILL (no shutdown, nothing saved) and start a new, empty server on the same port."""
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=5)
    server.stop()
    server.start()


def alive(procs: dict[str, Proc]) -> None:
    """Fail, naming the process and showing its log, as soon as one of them exited."""
    for name, proc in procs.items():
        code = proc.popen.poll()
        if code is None:
            continue
        log = proc.output()
        if name == "worker" and KOMBU_CRASH in log:
            pytest.fail(
                "the Celery worker exited after a Redis restart: kombu's channel close crashed "
                f"on the lost broker connection (issue 11, item 6; branch h11e fixes it), rc "
                f"{code}:\n{log[-3000:]}"
            )
        pytest.fail(f"the {name} exited with {code}:\n{log[-3000:]}")


def recovered(r: redis.Redis, procs: dict[str, Proc], ticker: Ticker) -> Callable[[], bool]:
    """The tenant is ready again, and the worker applied an event sent after that."""
    sent: list[tuple[int, float]] = []

    def check() -> bool:
        alive(procs)
        try:
            if r.hget(KEYS.meta, "ready") != b"1":
                return False
            if not sent:
                sent.append((ticker.tick(), time.time() * 1000))
            cost = r.hget(KEYS.values(DataClass.CREDIT_COSTS), TICK)
            applied_ms = r.hget(KEYS.meta, "last-event-ms")
        except redis.ConnectionError:
            return False
        value, sent_ms = sent[0]
        return cost is not None and int(cost) >= value and float(applied_ms or 0) >= sent_ms

    return check


def test_redis_restarted_empty_ten_times_never_answers_not_found(stack: dict[str, Any]) -> None:
    server, wrapper, r, tmp = stack["server"], stack["wrapper"], stack["r"], stack["tmp"]
    env = stack["env"]
    api_args = [str(BIN / "crmcache"), "api", "--port", str(stack["api_port"])]
    procs = {
        "worker": Proc([str(BIN / "celery"), "-A", "tasks", "worker"], env, tmp / "worker.log"),
        "subscriber": Proc(subscriber_args(), env, tmp / "subscriber.log"),
        "api": Proc(api_args, env, tmp / "api.log"),
    }
    answers = Answers()
    ticker = Ticker(wrapper)
    recoveries: list[float] = []
    with running(*procs.values()):
        # Given the whole stack running, acme ready, and load on every endpoint
        wait_until(lambda: alive(procs) or r.hget(KEYS.meta, "ready") == b"1", timeout=40)
        wait_until(lambda: _answers(stack["api"]), timeout=30, what="the HTTP API")
        ticker.thread.start()
        load = Load(stack["api"], answers).start()
        try:
            for round_ in range(ROUNDS):
                time.sleep(1.0)
                # When Redis is SIGKILLed and comes back empty
                kill_and_restart_empty(server)
                killed = time.monotonic()
                # Then the tenant is ready again and events are applied again within seconds
                wait_until(
                    recovered(r, procs, ticker),
                    timeout=30,
                    what=lambda n=round_: f"recovery after round {n + 1}\n{_tails(procs)}",
                )
                recoveries.append(time.monotonic() - killed)
            time.sleep(1.0)
        finally:
            load.stop()
            ticker.stop()
        # And settlement went on: what was charged since the last restart reached the Wrapper
        wait_until(
            lambda: alive(procs) or r.xlen(KEYS.credit_outbox) == 0,
            timeout=30,
            what=lambda: f"outbox drained\n{_tails(procs)}",
        )
        assert wrapper.consumed
    # And every answer was right or 503, never a 404
    summary = ", ".join(f"{e} {s}: {n}" for (e, s), n in sorted(answers.counts.items()))
    print(f"answers: {summary}; recovered in {', '.join(f'{t:.1f}' for t in recoveries)} s")
    assert not answers.wrong, f"{len(answers.wrong)} wrong answers, first: {answers.wrong[:10]}"
    assert answers.counts["lead user-456", 201] > 0 and answers.counts["validate", 200] > 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _tails(procs: dict[str, Proc]) -> str:
    return "\n".join(f"--- {name}\n{proc.output()[-1500:]}" for name, proc in procs.items())
