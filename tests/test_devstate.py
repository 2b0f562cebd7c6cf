"""The dev stack's state directory: secrets kept across restarts, private files, and the
commands of a second terminal taking a running stack's variables (what the environment sets
wins; a stack that is gone lends nothing)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.dev import devstate
from tests.conftest import wait_until


@pytest.fixture
def up_process() -> Iterator[int]:
    """A live process standing in for a running ``up``."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    wait_until(lambda: devstate.process_started(proc.pid) is not None, what="the process")
    yield proc.pid
    proc.kill()
    proc.wait()


STACK_ENV = {
    "REDIS_URL": "redis://127.0.0.1:7001/0",
    "WRAPPER_API_URL": "http://127.0.0.1:8081",
    "WRAPPER_API_TOKEN": "sandbox-token",
}


def test_generated_secrets_are_kept_for_the_next_start(tmp_path: Path) -> None:
    # Given a first start that generated a token, keys and a login
    first = devstate.DevSecrets.load(tmp_path, renew=False)
    token, keys, login = first.token(), first.keys_for(["acme", "globex"]), first.flower()
    first.save(tmp_path)
    # When the stack starts again
    again = devstate.DevSecrets.load(tmp_path, renew=False)
    # Then it gets the same ones, and only a new tenant gets a new key
    assert (again.token(), again.flower()) == (token, login)
    assert again.keys_for(["acme", "globex", "initech"])["acme"] == keys["acme"]
    assert again.changed  # initech's new key is saved at the next save
    renewed = devstate.DevSecrets.load(tmp_path, renew=True)
    assert renewed.keys_for(["acme"])["acme"] != keys["acme"]


def test_state_files_are_readable_by_their_owner_only(tmp_path: Path, up_process: int) -> None:
    state = tmp_path / "state"
    secrets = devstate.DevSecrets.load(state, renew=False)
    secrets.token()
    secrets.save(state)
    written = devstate.write_stack(state, {"pid": up_process, "env": STACK_ENV})
    assert written is not None
    assert state.stat().st_mode & 0o777 == 0o700
    for path in (written, state / devstate.SECRETS_FILE):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_second_terminal_takes_what_its_environment_lacks(
    tmp_path: Path, up_process: int
) -> None:
    devstate.write_stack(tmp_path, {"pid": up_process, "env": STACK_ENV})
    environ = {devstate.STATE_DIR_VARIABLE: str(tmp_path), "WRAPPER_API_TOKEN": "mine"}
    said = devstate.use_running_stack(environ)
    assert environ["REDIS_URL"] == STACK_ENV["REDIS_URL"]
    assert environ["WRAPPER_API_TOKEN"] == "mine"  # set explicitly: it wins
    assert said is not None and f"pid {up_process}" in said
    assert "REDIS_URL, WRAPPER_API_URL from" in said and "\n" not in said


def test_a_command_aimed_at_another_redis_takes_nothing(tmp_path: Path, up_process: int) -> None:
    devstate.write_stack(tmp_path, {"pid": up_process, "env": STACK_ENV})
    for aimed in ({"REDIS_URL": "redis://elsewhere:6379/0"}, {"REDIS_HOST": "elsewhere"}):
        environ = {devstate.STATE_DIR_VARIABLE: str(tmp_path), **aimed}
        assert devstate.use_running_stack(environ) is None
        assert "WRAPPER_API_TOKEN" not in environ


def test_a_stack_that_is_gone_lends_nothing(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass", "crmcache"])
    gone.wait()
    devstate.write_stack(tmp_path, {"pid": gone.pid, "env": STACK_ENV})
    environ = {devstate.STATE_DIR_VARIABLE: str(tmp_path)}
    assert devstate.use_running_stack(environ) is None
    assert environ == {devstate.STATE_DIR_VARIABLE: str(tmp_path)}
    devstate.remove_stack(tmp_path, gone.pid)
    assert not (tmp_path / devstate.STACK_FILE).exists()


def test_a_reused_pid_lends_nothing(tmp_path: Path, up_process: int) -> None:
    # Given stack.json naming a pid that now belongs to a process started at another time
    started = devstate.process_started(up_process)
    assert started is not None
    devstate.write_stack(tmp_path, {"pid": up_process, "pidStarted": started + 1, "env": STACK_ENV})
    environ = {devstate.STATE_DIR_VARIABLE: str(tmp_path)}
    # When a second terminal looks for the stack, then it finds none and takes nothing
    assert devstate.use_running_stack(environ) is None
    assert "REDIS_URL" not in environ
    # ... while the process that did write it is found
    devstate.write_stack(tmp_path, {"pid": up_process, "pidStarted": started, "env": STACK_ENV})
    assert devstate.use_running_stack(environ) is not None
