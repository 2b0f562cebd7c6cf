"""Test harness: a real Redis server per session (free port, nothing on disk), a real Wrapper
(the sandbox) on loopback, a real in-process Celery worker. No fakes, no eager mode.

A run where no Redis server can be started fails; it never skips.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from ops.dev.redis_server import RedisServer, ServerStartError

# Tuned for fast tests; every value is an ordinary setting (see the README).
TEST_ENV = {
    "CRM_HEALTH_CHECK_INTERVAL": "0.5",
    "CRM_LEADER_LEASE": "1.5",
    "CRM_RECONNECT_MAX_DELAY": "0.5",
    "CRM_REDIS_SOCKET_TIMEOUT": "2",
    "CRM_WRAPPER_RETRIES": "1",
    "CRM_WRAPPER_READ_TIMEOUT": "3",
    "CRM_WRAPPER_BREAKER_FAILURES": "3",
    "CRM_WRAPPER_BREAKER_RESET": "1",
    "CRM_TASK_TIME_LIMIT": "30",
    "CRM_VISIBILITY_TIMEOUT": "60",
    "CRM_PRELOAD_INTERVAL": "3600",
    "CRM_LOG_LEVEL": "WARNING",
}


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | Callable[[], str] = "",
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout`.
    `what` names the wait in the failure (a callable is evaluated then, e.g. to show a log)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {described or condition}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except ServerStartError as exc:
        pytest.fail(f"cannot start a Redis server for the tests: {exc}")
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def cache_url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(scope="session")
def broker_url(redis_server: RedisServer) -> str:
    # The broker lives in its own database so that flushing the cache between tests keeps
    # kombu's queue bindings.
    return f"redis://127.0.0.1:{redis_server.port}/1"


@pytest.fixture(scope="session")
def sandbox(cache_url: str) -> Iterator[Any]:
    from sandbox import SandboxWrapper

    with SandboxWrapper(redis_url=cache_url, token="test-token") as wrapper:
        yield wrapper


@pytest.fixture(scope="session")
def env(
    cache_url: str, broker_url: str, sandbox: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The process environment every crmcache component of the session reads its settings
    from (the worker's tasks read them once, on first use)."""
    from config.settings import get_settings

    values = {
        **TEST_ENV,
        "REDIS_URL": cache_url,
        "CELERY_BROKER_URL": broker_url,
        "WRAPPER_API_URL": sandbox.url,
        "WRAPPER_API_TOKEN": "test-token",
        # An empty state directory: a `crmcache up` the developer runs in this checkout must
        # not lend its settings to the commands the tests run (ops/dev/devstate.py).
        "CRM_STATE_DIR": str(tmp_path_factory.mktemp("no-dev-stack")),
        # Never the repository's state dir; tests of leads use PostgreSQL (``database_url``).
        "CRM_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('leads')}/leads.sqlite3",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    yield values
    for name, old in saved.items():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def database_url(env: dict[str, str]) -> Iterator[str]:
    """A PostgreSQL database of the session (tests/postgres.py says how it is found), in the
    environment as CRM_DATABASE_URL for every component started from now on."""
    from config.settings import get_settings
    from tests import postgres

    try:
        database, server, how = postgres.start()
    except postgres.PostgresUnavailable as exc:
        postgres.report(f"PostgreSQL run: did not happen ({exc})")
        pytest.fail(f"cannot get a PostgreSQL database for the tests: {exc}")
    postgres.report(f"PostgreSQL run: happened ({how})")
    saved = os.environ["CRM_DATABASE_URL"]
    os.environ["CRM_DATABASE_URL"] = database.url
    get_settings.cache_clear()
    from tasks import resources

    resources.lead_store.cache_clear()  # a worker's tasks open the database on first use
    resources.reconciler.cache_clear()
    yield database.url
    os.environ["CRM_DATABASE_URL"] = saved
    get_settings.cache_clear()
    database.drop()
    if server is not None:
        server.cleanup()


@pytest.fixture
def lead_store(database_url: str) -> Iterator[Any]:
    """The leads database, emptied before each test."""
    from crmcache.lead_store import LeadStore, leads

    store = LeadStore(database_url)
    store.create_schema()
    with store.engine.begin() as conn:
        conn.execute(leads.delete())
    yield store
    store.close()


@pytest.fixture
def settings(env: dict[str, str]) -> Any:
    from config.settings import get_settings

    return get_settings()


@pytest.fixture
def r(cache_url: str, redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the cache database, emptied before each test."""
    client = redis.Redis.from_url(cache_url, socket_timeout=5)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(r: redis.Redis) -> Any:
    from crmcache.store import Store

    return Store(r)


@pytest.fixture
def wrapper(sandbox: Any) -> Iterator[Any]:
    """The sandbox Wrapper, reset to its bundled sample data before each test."""
    sandbox.reset()
    yield sandbox
    sandbox.clear_faults()
    sandbox.set_down(False)


@pytest.fixture(scope="session")
def celery_app(env: dict[str, str]) -> Any:
    from config.celery import celery_config
    from config.settings import get_settings
    from tasks import resources
    from tasks.celery import app

    # A test module may have imported `tasks` at collection time, configuring the app from the
    # environment as it was then: configure it again from the session's settings.
    app.conf.update(celery_config(get_settings()))
    resources.store.cache_clear()
    resources.wrapper.cache_clear()
    return app


@pytest.fixture(scope="session")
def worker(celery_app: Any) -> Iterator[Any]:
    """A real Celery worker in this process (threads pool, 4 at once: tasks do race)."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=10,
    ) as controller:
        yield controller


class RunningSubscriber:
    """A Subscriber serving in a background thread."""

    def __init__(self, subscriber: Any) -> None:
        self.subscriber = subscriber
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.subscriber.run()

    def start(self) -> RunningSubscriber:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.subscriber.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "subscriber did not stop"


@pytest.fixture
def start_subscriber(
    settings: Any, worker: Any, r: redis.Redis
) -> Iterator[Callable[..., RunningSubscriber]]:
    """Start subscribers (each with its own Celery producer); all are stopped after the test."""
    from consumer.ingest.subscriber import Subscriber
    from tasks.producer import CeleryEnqueuer

    started: list[tuple[RunningSubscriber, CeleryEnqueuer]] = []

    def start(**overrides: Any) -> RunningSubscriber:
        subscriber_settings = settings.model_copy(update=overrides) if overrides else settings
        enqueuer = CeleryEnqueuer(subscriber_settings)
        running = RunningSubscriber(Subscriber(subscriber_settings, enqueuer)).start()
        started.append((running, enqueuer))
        return running

    yield start
    for running, enqueuer in started:
        running.stop()
        enqueuer.close()


@pytest.fixture
def subscriber(start_subscriber: Callable[..., RunningSubscriber], r: redis.Redis) -> Any:
    """One active subscriber, subscribed and done with its first resync."""
    running = start_subscriber()
    wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
    return running
