"""A private RabbitMQ virtual host for the tests that use RabbitMQ as Celery's broker.

RabbitMQ is optional: when nothing answers on ``CRM_TEST_RABBITMQ`` (``127.0.0.1:5672`` by
default) those tests skip with the reason, unless ``CRM_REQUIRE_RABBITMQ=1`` (then they fail).
Every run gets its own vhost, so concurrent runs on one broker never share a queue; it is created
with ``rabbitmqctl`` when this user may run it, else through the management API (port 15672).
When ``CRM_TEST_RABBITMQ_REPORT`` names a file, one line saying whether the RabbitMQ run
happened is written to it (``.ci/run`` prints it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import requests

USER = os.environ.get("CRM_TEST_RABBITMQ_USER", "guest")
PASSWORD = os.environ.get("CRM_TEST_RABBITMQ_PASSWORD", "guest")


class RabbitMQUnavailable(Exception):
    """No RabbitMQ answers, or no private vhost can be made on it."""


def address() -> tuple[str, int]:
    host, _, port = os.environ.get("CRM_TEST_RABBITMQ", "127.0.0.1:5672").rpartition(":")
    return host or "127.0.0.1", int(port)


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def report(line: str) -> None:
    path = os.environ.get("CRM_TEST_RABBITMQ_REPORT")
    if path:
        with Path(path).open("a") as out:
            out.write(line + "\n")


def required() -> bool:
    return os.environ.get("CRM_REQUIRE_RABBITMQ", "") in {"1", "true", "yes"}


class PrivateVhost:
    """A vhost of its own on the broker, deleted (with all its queues) at `delete()`."""

    def __init__(self) -> None:
        self.host, self.port = address()
        if not answers(self.host, self.port):
            raise RabbitMQUnavailable(f"nothing answers on {self.host}:{self.port}")
        self.name = f"crmcache-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._via = self._create()

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{self.host}:{self.port}/{quote(self.name, safe='')}"

    def _create(self) -> str:
        problems = []
        ctl = shutil.which("rabbitmqctl")
        if ctl and self.host in {"127.0.0.1", "localhost"}:
            try:
                self._ctl("add_vhost", self.name)
                self._ctl("set_permissions", "-p", self.name, USER, ".*", ".*", ".*")
                return "rabbitmqctl"
            except (subprocess.SubprocessError, OSError) as exc:
                problems.append(f"rabbitmqctl: {exc}")
        try:
            self._api("PUT", f"vhosts/{quote(self.name, safe='')}")
            self._api(
                "PUT",
                f"permissions/{quote(self.name, safe='')}/{quote(USER, safe='')}",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
            return "api"
        except (requests.RequestException, RuntimeError) as exc:
            problems.append(f"management API: {exc}")
        raise RabbitMQUnavailable(
            f"RabbitMQ answers on {self.host}:{self.port} but no private vhost could be made ("
            + "; ".join(problems)
            + ")"
        )

    def _ctl(self, *args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=30)

    def _api(self, method: str, path: str, body: object = None) -> None:
        port = int(os.environ.get("CRM_TEST_RABBITMQ_API_PORT", "15672"))
        response = requests.request(
            method,
            f"http://{self.host}:{port}/api/{path}",
            json=body,
            auth=(USER, PASSWORD),
            timeout=5,
        )
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}")

    def delete(self) -> None:
        try:
            if self._via == "rabbitmqctl":
                self._ctl("delete_vhost", self.name)
            else:
                self._api("DELETE", f"vhosts/{quote(self.name, safe='')}")
        except (subprocess.SubprocessError, OSError, requests.RequestException, RuntimeError):
            pass  # a leftover empty vhost is harmless
