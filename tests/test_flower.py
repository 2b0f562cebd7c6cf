"""Flower behind basic authentication (``crmcache flower``), and short task-argument previews."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from config.amqp import TASK_ARGS_PREVIEW
from ops.dev.redis_server import free_port
from tests.conftest import wait_until

CRMCACHE = str(Path(sys.executable).with_name("crmcache"))
USER, PASSWORD = "ops", "s3cret-flower-pw"
PROTECTED = (
    "/",
    "/workers",
    "/tasks",
    "/broker",
    "/api/workers",
    "/api/tasks",
    "/api/task/types",
    "/api/queues/length",
    "/metrics",
)


def _answers(url: str) -> bool:
    try:
        with requests.get(url, timeout=1) as reply:
            return reply.status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def flower(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    child_env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
        # Must not open the API: crmcache flower drops it.
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    with open(log, "w") as out:
        process = subprocess.Popen(
            [CRMCACHE, "flower", "--port", str(port)],
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                lambda: process.poll() is not None or _answers(f"{url}/healthcheck"),
                timeout=30,
                what="flower",
            )
            assert process.poll() is None, log.read_text()
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.parametrize("path", PROTECTED)
def test_flower_refuses_requests_without_credentials(flower: str, path: str) -> None:
    with requests.get(flower + path, timeout=5) as reply:
        assert reply.status_code == 401
        if not path.startswith("/api/"):  # pages ask the browser for a login; the API does not
            assert "Basic" in reply.headers.get("WWW-Authenticate", "")


def test_flower_refuses_wrong_credentials(flower: str) -> None:
    with requests.get(f"{flower}/api/workers", auth=(USER, "wrong"), timeout=5) as reply:
        assert reply.status_code == 401


@pytest.mark.parametrize("path", ["/", "/api/workers"])
def test_flower_accepts_the_configured_credentials(flower: str, path: str) -> None:
    with requests.get(flower + path, auth=(USER, PASSWORD), timeout=5) as reply:
        assert reply.status_code == 200


def test_flower_metrics_answer_with_the_configured_credentials(flower: str) -> None:
    with requests.get(f"{flower}/metrics", auth=(USER, PASSWORD), timeout=5) as reply:
        assert reply.status_code == 200
        assert "flower_events_total" in reply.text


def test_flower_healthcheck_stays_open_and_says_nothing_else(flower: str) -> None:
    with requests.get(f"{flower}/healthcheck", timeout=5) as reply:
        assert (reply.status_code, reply.text) == (200, "OK")


def test_flower_does_not_start_without_credentials(env: dict[str, str]) -> None:
    child_env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    done = subprocess.run(
        [CRMCACHE, "flower", "--port", str(free_port())],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "FLOWER_BASIC_AUTH" in done.stderr


def _message(app: Any, args: tuple[Any, ...]) -> Any:
    return app.amqp.as_task_v2(
        "00000000-0000-0000-0000-000000000001",
        "crmcache.apply_events",
        args=args,
        kwargs={"reason": "x" * 500},
        create_sent_event=True,
    )


def test_task_argument_previews_do_not_carry_user_data(settings: Any) -> None:
    # Given a batch whose events name a user and carry their data
    from tasks.celery import app as worker_app
    from tasks.producer import CeleryEnqueuer

    secret = "jane.doe@example.com"
    events = [
        {"s": 1, "c": "users", "t": "user-changed", "d": {"userId": secret, "status": "active"}}
    ]
    enqueuer = CeleryEnqueuer(settings)
    try:
        for app in (worker_app, enqueuer.app):
            # When Celery builds the task message (worker app and subscriber app alike)
            message = _message(app, ("acme", events))
            # Then the previews Flower shows are short and hold no user data; args are intact
            for preview in (
                message.headers["argsrepr"],
                message.headers["kwargsrepr"],
                message.sent_event["args"],
            ):
                assert len(preview) <= TASK_ARGS_PREVIEW + 8
                assert secret not in preview
            assert "acme" in message.headers["argsrepr"]
            assert json.dumps(message.body[0]) == json.dumps(("acme", events)).replace("(", "[")
    finally:
        enqueuer.close()
