"""Fixtures of the HTTP API tests (imported by the tests/test_api_*.py modules)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from consumer.api import create_app
from crmcache.preload import preload_tenant
from crmcache.wrapper import WrapperClient
from ops.dev.redis_server import free_port
from tests.api_support import API_KEYS


@pytest.fixture
def api_settings(settings: Any, lead_store: Any, database_url: str) -> Any:
    """The API's settings: the test keys, and the (emptied) PostgreSQL leads database."""
    return settings.model_copy(
        update={"api_keys": SecretStr(API_KEYS), "database_url": SecretStr(database_url)}
    )


@pytest.fixture
def preload(settings: Any, store: Any, wrapper: Any) -> Iterator[Any]:
    """Call to make tenants ready (after changing the sandbox's data, if the test does)."""
    client = WrapperClient(settings)

    def load(*tenants: str) -> None:
        for tenant in tenants or ("acme", "globex"):
            preload_tenant(store, client, tenant)

    yield load
    client.close()


@pytest.fixture
def make_app(api_settings: Any) -> Iterator[Any]:
    apps: list[FastAPI] = []

    def make(settings: Any = None) -> FastAPI:
        app = create_app(settings or api_settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.service.close()


class LiveServer:
    """The app served by a real uvicorn on loopback, in a thread; ``client`` talks to it."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve(make_app: Any) -> Any:
    """``with serve() as client:`` a live server of a new app (optionally other settings)."""

    def start(settings: Any = None) -> LiveServer:
        return LiveServer(make_app(settings))

    return start


@pytest.fixture
def api(serve: Any, preload: Any) -> Iterator[httpx.Client]:
    """A client of a live API server with both tenants ready."""
    preload()
    with serve() as client:
        yield client
