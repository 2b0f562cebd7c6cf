"""The all-in-one development stack behind ``crmcache up``.

Redis (embedded when neither REDIS_URL nor REDIS_HOST is set: a throwaway server on a free port,
nothing on disk), the sandbox Wrapper (when WRAPPER_API_URL is not set), a Celery worker, beat,
the subscriber, the HTTP API and Flower, all sharing one environment. Secrets that are not set
(WRAPPER_API_TOKEN, CRM_API_KEYS, FLOWER_BASIC_AUTH) are generated once and kept in the state
directory (ops/dev/devstate.py), so that they stay the same across restarts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from config.apikeys import parse_api_keys
from config.celery import EVENTS_URGENT_QUEUE, QUEUES
from config.settings import Settings, get_settings, load_settings
from crmcache import keyspace
from crmcache.redis_client import make_redis
from crmcache.store_base import text
from ops.dev import devstate
from ops.dev.redis_server import RedisServer, free_port
from ops.dev.stack import Part, Supervisor

if TYPE_CHECKING:
    import redis

EMBEDDED_REDIS_ARGS = ("--maxmemory", "256mb", "--maxmemory-policy", "noeviction")
"""As in docker-compose.yml: the broker's queues share this Redis, and noeviction never drops
them (a full Redis refuses writes instead: loud, not silent)."""

DEFAULT_PORTS = {"sandbox": 8081, "api": 8080, "flower": 5555}
PROBE_TIMEOUT = 1.0


@dataclass
class StackOptions:
    api_port: int | None = None
    flower_port: int | None = None
    sandbox_port: int | None = None
    flower: bool = True
    log_level: str = "INFO"
    startup_timeout: float = 90.0
    new_keys: bool = False
    """Generate new API keys, Flower login and sandbox token instead of the remembered ones."""


@dataclass
class StackInfo:
    """What a user needs to reach the running stack (printed by ``crmcache up``)."""

    redis_url: str = ""
    embedded_redis: bool = False
    wrapper_url: str = ""
    sandbox: bool = False
    wrapper_token: str = ""
    """The sandbox's bearer token (its /_admin endpoints need it too); empty for a real Wrapper."""
    tenants: list[str] = field(default_factory=list)
    api_url: str | None = None
    api_keys: dict[str, str] = field(default_factory=dict)
    """tenant -> plain key (generated, or plain entries of CRM_API_KEYS)."""
    flower_url: str | None = None
    flower_auth: str = ""
    ready_tenants: list[str] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    workdir: str = ""
    moved_ports: dict[str, dict[str, int]] = field(default_factory=dict)
    """Parts whose usual port was taken: name -> {"wanted": usual, "port": used}."""
    state_file: str | None = None
    """Where the commands of another terminal find this stack (ops/dev/devstate.py)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def package_root() -> str:
    """The directory holding the ``tasks`` package: ``celery -A tasks`` runs from there."""
    return str(Path(__file__).resolve().parents[2])


def pick_port(explicit: int | None, preferred: int) -> int:
    """`explicit` as given; else `preferred` when it is free, else any free port."""
    if explicit:
        return explicit
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def http_ok(url: str, **kwargs: Any) -> bool:
    with requests.get(url, timeout=PROBE_TIMEOUT, **kwargs) as response:
        return response.status_code == 200


class DevStack:
    """Builds, starts and stops the stack; ``info`` describes it once started."""

    def __init__(self, options: StackOptions, out: Any = None) -> None:
        self.options = options
        self.info = StackInfo()
        self.redis_server: RedisServer | None = None
        self.workdir = tempfile.mkdtemp(prefix="crmcache-up-")
        self.info.workdir = self.workdir
        self.env: dict[str, str] = {}
        self.supervisor = Supervisor({}, package_root(), out=out)
        self.settings: Settings | None = None
        self.session = secrets.token_hex(3)
        self._redis: redis.Redis | None = None
        self.state_dir = devstate.state_dir()
        self.secrets = devstate.DevSecrets.load(self.state_dir, options.new_keys)

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part and wait until each is ready (PartFailed / Interrupted otherwise)."""
        self._prepare_env()
        sup = self.supervisor
        if self.info.sandbox:
            sup.wait_ready([sup.start(self._sandbox_part())], self.options.startup_timeout)
        self.info.tenants = self._tenants()
        self._session_secrets()
        parts = [
            self._worker_part(),
            self._urgent_worker_part(),
            self._beat_part(),
            self._subscriber_part(),
            self._api_part(),
        ]
        if self.options.flower:
            parts.append(self._flower_part())
        for part in parts:
            sup.start(part)
        sup.wait_ready(parts, self.options.startup_timeout)
        self.info.parts = self.describe_parts()

    def _prepare_env(self) -> None:
        env = dict(os.environ)
        if not env.get("REDIS_URL") and not env.get("REDIS_HOST"):
            self.redis_server = RedisServer(extra_args=EMBEDDED_REDIS_ARGS).start()
            env["REDIS_URL"] = self.redis_server.url
            self.info.embedded_redis = True
        env.setdefault("CRM_LOG_LEVEL", self.options.log_level)
        env["PYTHONUNBUFFERED"] = "1"
        if not env.get("WRAPPER_API_URL"):
            env["WRAPPER_API_TOKEN"] = env.get("WRAPPER_API_TOKEN") or self.secrets.token()
            port = self._port("sandbox", self.options.sandbox_port)
            env["WRAPPER_API_URL"] = f"http://127.0.0.1:{port}"
            self.info.sandbox = True
            self.info.wrapper_token = env["WRAPPER_API_TOKEN"]
        if not env.get("CRM_DATABASE_URL"):  # leads: a SQLite file in the git-ignored state dir
            state = Path(env.get("CRM_STATE_DIR") or Path(package_root()) / ".crmcache")
            env["CRM_DATABASE_URL"] = f"sqlite:///{state / 'leads.sqlite3'}"
        self._apply(env)

    def _apply(self, env: dict[str, str]) -> None:
        """Use `env` for every part and for this process's own settings (probes, demo)."""
        self.env = env
        self.supervisor.env = env
        os.environ.update(env)
        get_settings.cache_clear()
        self.settings = load_settings()  # ConfigError names a bad variable
        self.info.redis_url = self.settings.cache_url
        self.info.wrapper_url = self.settings.wrapper_api_url

    def _session_secrets(self) -> None:
        env = dict(self.env)
        if env.get("CRM_API_KEYS"):
            for key in env["CRM_API_KEYS"].split(","):
                tenant, _, secret = key.strip().partition(":")
                if secret and not secret.startswith("sha256:"):
                    self.info.api_keys.setdefault(tenant, secret)
        else:
            self.info.api_keys = self.secrets.keys_for(self.info.tenants)
            env["CRM_API_KEYS"] = ",".join(f"{t}:{k}" for t, k in self.info.api_keys.items())
            parse_api_keys(env["CRM_API_KEYS"])
        if self.options.flower and not env.get("FLOWER_BASIC_AUTH"):
            env["FLOWER_BASIC_AUTH"] = self.secrets.flower()
        self.info.flower_auth = env.get("FLOWER_BASIC_AUTH", "").split(",")[0]
        self.secrets.save(self.state_dir)
        self._apply(env)

    def _port(self, name: str, explicit: int | None) -> int:
        """The part's usual port when free, else a free one, which the banner announces."""
        port = pick_port(explicit, DEFAULT_PORTS[name])
        if not explicit and port != DEFAULT_PORTS[name]:
            self.info.moved_ports[name] = {"wanted": DEFAULT_PORTS[name], "port": port}
        return port

    def connection_env(self) -> dict[str, str]:
        """The variables a command in another terminal needs to reach this stack."""
        names = "CELERY_BROKER_URL WRAPPER_API_URL WRAPPER_API_TOKEN CRM_TENANTS CRM_API_KEYS"
        names += " FLOWER_BASIC_AUTH"
        found = {name: self.env[name] for name in names.split() if self.env.get(name)}
        return {"REDIS_URL": self.info.redis_url, **found}

    def _tenants(self) -> list[str]:
        assert self.settings is not None
        if self.settings.tenants:
            return list(self.settings.tenants)
        token = self.settings.wrapper_api_token.get_secret_value()
        try:
            with requests.get(
                f"{self.settings.wrapper_api_url}/api/tenants",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            ) as response:
                response.raise_for_status()
                return [str(item["tenantId"]) for item in response.json()]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return []

    # --- parts -----------------------------------------------------------------------------------

    def _sandbox_part(self) -> Part:
        url = self.env["WRAPPER_API_URL"]
        port = url.rsplit(":", 1)[1]
        headers = {"Authorization": f"Bearer {self.env['WRAPPER_API_TOKEN']}"}
        return Part(
            "sandbox",
            [sys.executable, "-m", "ops.dev.run_sandbox", "--port", port],
            url=url,
            note="development Wrapper; change data with /_admin/... (publishes events)",
            stop_stage=2,  # last: the worker's last tasks may still call the Wrapper
            ready=lambda: http_ok(f"{url}/api/tenants", headers=headers),
        )

    def _celery(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "tasks", "--quiet", *args]

    def _worker_part(self) -> Part:
        name = f"up-{self.session}@%h"
        return Part(
            "worker",
            self._celery(
                "worker",
                "--concurrency=2",
                f"--hostname={name}",
                f"--loglevel={self.env['CRM_LOG_LEVEL']}",
                "--without-gossip",
                "--without-mingle",
                f"--queues={','.join(q for q in QUEUES if q != EVENTS_URGENT_QUEUE)}",
            ),
            note="Celery worker, 2 processes, every queue but the urgent lane",
            stop_stage=1,  # after what sends it tasks; it finishes what it holds
            ready=self._worker_answers,
        )

    def _urgent_worker_part(self) -> Part:
        """Revocations without the prefork hop or a wait behind other batches."""
        return Part(
            "urgent-worker",
            self._celery(
                "worker",
                "--pool=solo",
                f"--hostname=up-{self.session}-urgent@%h",
                f"--loglevel={self.env['CRM_LOG_LEVEL']}",
                "--without-gossip",
                "--without-mingle",
                f"--queues={EVENTS_URGENT_QUEUE}",
            ),
            note="Celery worker, solo pool: the urgent lane (events that may revoke access)",
            stop_stage=1,
        )

    def _beat_part(self) -> Part:
        return Part(
            "beat",
            self._celery(
                "beat",
                f"--schedule={os.path.join(self.workdir, 'beat-schedule')}",
                f"--loglevel={self.env['CRM_LOG_LEVEL']}",
            ),
            note="Celery beat: periodic preload, metrics, settlement sweep",
        )

    def _subscriber_part(self) -> Part:
        return Part(
            "subscriber",
            [sys.executable, "-m", "ops", "subscribe"],
            note="listens on crm:<tenant>:<stream>",
            ready=self._subscriber_leads,
        )

    def _api_part(self) -> Part:
        port = self._port("api", self.options.api_port)
        url = f"http://127.0.0.1:{port}"
        self.info.api_url = url
        return Part(
            "api",
            [sys.executable, "-m", "ops", "api", "--host", "127.0.0.1", "--port", str(port)],
            url=url,
            note="HTTP API (OpenAPI at /docs); send X-API-Key",
            ready=lambda: http_ok(f"{url}/healthz"),
        )

    def _flower_part(self) -> Part:
        port = self._port("flower", self.options.flower_port)
        url = f"http://127.0.0.1:{port}"
        self.info.flower_url = url
        user, _, password = self.info.flower_auth.partition(":")
        return Part(
            "flower",
            [sys.executable, "-m", "ops", "flower", "--address", "127.0.0.1"]
            + ["--port", str(port)],
            url=url,
            note="Celery monitor (basic auth)",
            ready=lambda: http_ok(f"{url}/api/workers", auth=(user, password)),
        )

    # --- probes ----------------------------------------------------------------------------------

    def redis(self) -> redis.Redis:
        if self._redis is None:
            assert self.settings is not None
            self._redis = make_redis(self.settings.cache_url, socket_timeout=2)
        return self._redis

    def _worker_answers(self) -> bool:
        from celery import Celery

        from config.celery import celery_config

        assert self.settings is not None
        app = Celery("crmcache-up")
        app.conf.update(celery_config(self.settings))
        try:
            replies = app.control.ping(timeout=0.5) or []
        finally:
            app.close()
        return any(name.startswith(f"up-{self.session}@") for r in replies for name in r)

    def _subscriber_leads(self) -> bool:
        return bool(self.redis().get(keyspace.LEADER))

    def active_subscriber(self) -> str | None:
        holder = self.redis().get(keyspace.LEADER)
        return text(holder) if holder is not None else None

    def wait_tenants_ready(self, timeout: float, should_stop: Callable[[], bool]) -> list[str]:
        """Wait (bounded) until every tenant's first preload marked it ready."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [
                t
                for t in self.info.tenants
                if self.redis().hget(keyspace.TenantKeys.of(t).meta, keyspace.META_READY)
                == keyspace.READY_FLAG
            ]
            if len(ready) == len(self.info.tenants) or time.monotonic() > deadline:
                break
            if should_stop():
                break
            time.sleep(0.1)
        self.info.ready_tenants = ready
        return ready

    def describe_parts(self) -> list[dict[str, Any]]:
        described: list[dict[str, Any]] = []
        if self.info.embedded_redis and self.redis_server and self.redis_server.process:
            described.append(
                {
                    "name": "redis",
                    "pid": self.redis_server.process.pid,
                    "url": self.info.redis_url,
                    "note": f"embedded {Path(self.redis_server.binary).name}, nothing on disk, "
                    "maxmemory 256mb noeviction",
                }
            )
        for part in self.supervisor.parts:
            described.append(
                {"name": part.name, "pid": part.pid, "url": part.url, "note": part.note}
            )
        return described

    # --- stop ------------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every part, then Redis; remove the session's files. Returns SIGKILLed parts."""
        killed = self.supervisor.stop()
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self.redis_server is not None:
            self.redis_server.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return killed
