"""docker-compose.yml, the Dockerfile and .env.example: valid, and saying what we promise.

Without a Docker engine the promises are checked on their real parts: the Redis command runs
on a real server with its users, and the app's processes get .env.example's values."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from ruamel.yaml import YAML

from config.settings import load_settings
from crmcache.keyspace import STREAMS, TenantKeys
from ops.dev.redis_server import free_port, server_binary
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"redis", "worker", "urgent-worker", "beat", "subscriber", "api", "flower"}
APP_SERVICES = {"worker", "urgent-worker", "beat", "subscriber", "api", "flower", "sandbox"}
CRMCACHE = str(Path(sys.executable).with_name("crmcache"))
CELERY = str(Path(sys.executable).with_name("celery"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return loaded


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_config_accepts_the_file() -> None:
    if not _docker_compose_available():
        pytest.skip("no `docker compose` CLI on this machine; validated against the schema only")
    done = subprocess.run(
        ["docker", "compose", "--env-file", ".env.example", "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_every_queue_has_a_worker_and_the_urgent_lane_one_of_its_own(
    compose: dict[str, Any],
) -> None:
    from config.celery import EVENTS_URGENT_QUEUE, QUEUES

    def queues(service: str) -> set[str]:
        command = compose["services"][service]["command"]
        options = [part for part in command if part.startswith("--queues=")]
        return set(options[0].split("=", 1)[1].split(",")) if options else set(QUEUES)

    assert queues("urgent-worker") == {EVENTS_URGENT_QUEUE}
    assert "--pool=solo" in compose["services"]["urgent-worker"]["command"]
    assert queues("worker") == set(QUEUES) - {EVENTS_URGENT_QUEUE}


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert SERVICES <= set(services)
    for name, service in services.items():
        if name != "config-check":  # a one-shot: it exits
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_images_are_pinned_to_a_release(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        # a release: major.minor.patch, or major.minor where that is the project's scheme
        # (PostgreSQL: 15.10); never a bare major or "latest"
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?(-[\w.-]+)?", image), f"{name}: {image}"


def test_no_app_service_starts_before_the_configuration_passed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["config-check"]["command"] == ["crmcache", "check-config"]
    assert services["config-check"]["restart"] == "no"  # one message, not a loop
    for name in APP_SERVICES:
        gate = services[name]["depends_on"]["config-check"]
        assert gate == {"condition": "service_completed_successfully"}, name


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message} (enough for this file)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise LookupError(f"required variable {name} is missing a value: {arg}")
        return arg if op == ":-" else ""

    pattern = r"\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}"
    return re.sub(pattern, one, value).replace("$$", "$")


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def test_without_an_env_file_compose_stops_with_one_message(compose: dict[str, Any]) -> None:
    # Given no .env (nothing sets REDIS_PASSWORD), when Redis' command is read
    command = compose["services"]["redis"]["command"]
    # Then compose refuses at once, naming the variable and what to do
    with pytest.raises(LookupError, match="REDIS_PASSWORD is missing a value: copy .env.example"):
        [_interpolate(part, {}) for part in command]


def test_docker_compose_without_an_env_file_names_the_variable(tmp_path: Path) -> None:
    if not _docker_compose_available():
        pytest.skip("no `docker compose` CLI on this machine; the interpolation is checked above")
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.read_text())
    done = subprocess.run(
        ["docker", "compose", "config", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr, done.stderr


@pytest.fixture
def compose_redis(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, dict[str, str]]]:
    """Redis started with docker-compose.yml's own command and test secrets. REDIS_URL is
    unset meanwhile: the settings must be built from REDIS_HOST/PORT/PASSWORD, as in compose."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    secrets = {"REDIS_PASSWORD": "app-secret-1", "REDIS_PUBLISHER_PASSWORD": "wrapper-secret-1"}
    command = [_interpolate(part, secrets) for part in compose["services"]["redis"]["command"]]
    assert command[0] == "redis-server"
    port = free_port()
    # Here: loopback, a free port, nothing on disk (later options win over the compose ones).
    local = ["--port", str(port), "--bind", "127.0.0.1", "--appendonly", "no", "--save", ""]
    server = subprocess.Popen(
        [server_binary(), *command[1:], *local, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        probe = redis.Redis(port=port, password=secrets["REDIS_PASSWORD"], socket_timeout=1)
        wait_until(lambda: _pings(probe), timeout=10, what="compose's redis")
        probe.close()
        yield port, secrets
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stderr:
            server.stderr.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_compose_redis_requires_the_password_the_app_is_given(
    compose: dict[str, Any], compose_redis: tuple[int, dict[str, str]]
) -> None:
    port, secrets = compose_redis
    anonymous = redis.Redis(port=port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("anything")
    anonymous.close()
    # The app's settings, as compose gives them (REDIS_HOST/PORT and .env's REDIS_PASSWORD)
    app_env = compose["services"]["worker"]["environment"]
    assert {k: v for k, v in app_env.items() if k.startswith("REDIS_")} == {
        "REDIS_HOST": "redis",
        "REDIS_PORT": "6379",
    }
    url = load_settings(
        REDIS_HOST="127.0.0.1", REDIS_PORT=port, REDIS_PASSWORD=secrets["REDIS_PASSWORD"]
    ).cache_url
    app = redis.Redis.from_url(url, socket_timeout=2)
    app.set("crm:{acme}:meta", "x")
    assert app.get("crm:{acme}:meta") == b"x"
    app.close()


def test_the_wrappers_redis_user_may_only_publish_input_events(
    compose: dict[str, Any], compose_redis: tuple[int, dict[str, str]]
) -> None:
    # Given the sandbox's settings in compose: Redis user "wrapper"
    port, secrets = compose_redis
    sandbox_env = compose["services"]["sandbox"]["environment"]
    assert sandbox_env["REDIS_USERNAME"] == "wrapper"
    url = load_settings(
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=port,
        REDIS_USERNAME="wrapper",
        REDIS_PASSWORD=secrets["REDIS_PUBLISHER_PASSWORD"],
    ).cache_url
    wrapper = redis.Redis.from_url(url, socket_timeout=2)
    try:
        # Then it publishes on every input stream, and on nothing else, and reads no key
        for stream in STREAMS:
            assert wrapper.publish(TenantKeys.of("acme").channel(stream), "{}") == 0
        with pytest.raises(redis.exceptions.NoPermissionError):
            wrapper.publish(TenantKeys.of("acme").changes_channel, "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            wrapper.get("crm:{acme}:meta")
    finally:
        wrapper.close()


def test_the_app_refuses_to_start_while_a_secret_says_change_me(env: dict[str, str]) -> None:
    # Given .env.example copied as it is
    example = {**os.environ, **_env_example()}
    # When a worker starts with it
    done = subprocess.run(
        [CELERY, "-A", "tasks", "worker"], env=example, capture_output=True, text=True, timeout=60
    )
    # Then it refuses in one line naming every placeholder secret, exit 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    for name in ("REDIS_PASSWORD", "WRAPPER_API_TOKEN", "CRM_API_KEYS", "FLOWER_BASIC_AUTH"):
        assert f"{name}: still says change-me" in lines[0]
    # And once those are set, compose's config-check still names the Wrapper's Redis password
    # (not a crmcache setting, but Redis takes it from the same .env)
    ours = ("REDIS_PASSWORD", "WRAPPER_API_TOKEN", "CRM_API_KEYS", "FLOWER_BASIC_AUTH")
    fixed = {**example, **{name: example[name].replace("change-me", "s3cret") for name in ours}}
    check = subprocess.run([CRMCACHE, "check-config"], env=fixed, capture_output=True, text=True)
    assert check.returncode == 2, check.stderr
    assert "REDIS_PUBLISHER_PASSWORD: still says change-me" in check.stderr


def test_the_config_check_passes_once_every_secret_is_set(env: dict[str, str]) -> None:
    real = {n: v.replace("change-me", "s3cret") for n, v in _env_example().items()}
    check = subprocess.run(
        [CRMCACHE, "check-config"], env={**os.environ, **real}, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    unset = {n: v for n, v in {**os.environ, **real}.items() if n != "FLOWER_BASIC_AUTH"}
    check = subprocess.run([CRMCACHE, "check-config"], env=unset, capture_output=True, text=True)
    assert check.returncode == 2 and "FLOWER_BASIC_AUTH is not set" in check.stderr


def test_redis_cannot_evict_broker_keys(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    policy = command[command.index("--maxmemory-policy") + 1]
    assert policy == "noeviction"
    assert "--maxmemory" in command


def test_two_subscribers_run_one_active_one_standby(compose: dict[str, Any]) -> None:
    subscriber = compose["services"]["subscriber"]
    assert subscriber["deploy"]["replicas"] == 2
    assert subscriber["command"] == ["crmcache", "subscribe"]


def test_flower_runs_through_the_command_that_requires_credentials(
    compose: dict[str, Any],
) -> None:
    flower = compose["services"]["flower"]
    assert flower["command"][:2] == ["crmcache", "flower"]
    assert "FLOWER_BASIC_AUTH" not in str(flower.get("environment", {}))  # no default password
    assert "FLOWER_UNAUTHENTICATED_API" not in COMPOSE.read_text()


def test_configuration_comes_from_an_env_file_that_is_not_committed(
    compose: dict[str, Any],
) -> None:
    example = (ROOT / ".env.example").read_text()
    for name in ("WRAPPER_API_URL", "WRAPPER_API_TOKEN", "CRM_API_KEYS", "FLOWER_BASIC_AUTH"):
        assert f"\n{name}=" in example
    assert compose["services"]["worker"]["env_file"] == [{"path": ".env", "required": False}]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_the_image_is_pinned_and_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    base = next(line for line in dockerfile if line.startswith("FROM"))
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim-\w+", base), base  # a release, not 3.11
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("RUN pip install -c constraints.txt .") for line in dockerfile)
