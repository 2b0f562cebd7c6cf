"""docker-compose.yml, the Dockerfile and .env.example: valid, and saying what we promise."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"redis", "worker", "beat", "subscriber", "api", "flower"}


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


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert SERVICES <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


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
