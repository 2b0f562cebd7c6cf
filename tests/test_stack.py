"""``crmcache up``, started as a new user would: a clean temporary directory, no REDIS_URL, no
Wrapper, no secrets configured. Every part comes up, a change made in the sandbox Wrapper is
answered by the HTTP API, and Ctrl-C leaves no process and no file behind.

Also the supervisor underneath, on tiny processes: a dying part is noticed, and a part that
ignores SIGTERM is killed after the grace period, its whole process group with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from ops.dev.redis_server import free_port
from ops.dev.stack import Part, PartFailed, Supervisor, group_alive
from tests.conftest import wait_until

CRMCACHE = str(Path(sys.executable).with_name("crmcache"))
PARTS = {"redis", "sandbox", "worker", "urgent-worker", "beat", "subscriber", "api", "flower"}


def new_user_env() -> dict[str, str]:
    """This process's environment without any crmcache configuration (the test session sets
    some for its own components)."""
    prefixes = ("REDIS_", "CRM_", "WRAPPER_", "CELERY_", "FLOWER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def process_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class UpProcess:
    """``crmcache up --json`` in a subprocess; its stdout is read line by line. Its state
    directory is `state` (not this checkout's .crmcache: a developer may run one there)."""

    def __init__(self, cwd: Path, log: IO[str], *args: str, state: Path | None = None) -> None:
        self.cwd = cwd
        self.state = state or cwd.with_name(cwd.name + "-state")
        self.env = {**new_user_env(), "CRM_STATE_DIR": str(self.state)}
        self.process = subprocess.Popen(
            [CRMCACHE, "up", "--json", *args],
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def next_event(self, timeout: float = 90.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                pytest.fail(f"crmcache up exited with {self.process.wait(5)} before an event")
            if line.startswith("{"):
                event: dict[str, Any] = json.loads(line)
                return event
        pytest.fail("no event from crmcache up in time")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpProcess, dict[str, Any]]]:
    cwd = tmp_path_factory.mktemp("new-user")
    state = tmp_path_factory.mktemp("state")
    logs = tmp_path_factory.mktemp("logs") / "up.log"
    with open(logs, "w") as log:
        ports = [str(free_port()) for _ in range(3)]
        ports_args = ["--api-port", ports[0], "--flower-port", ports[1], "--sandbox-port", ports[2]]
        running = UpProcess(cwd, log, *ports_args, state=state)
        try:
            event = running.next_event()
            assert event["event"] == "up", f"{event}\n{logs.read_text()[-3000:]}"
            yield running, event
        finally:
            running.close()


@pytest.mark.slow
def test_every_part_comes_up_and_says_where_it_listens(
    up: tuple[UpProcess, dict[str, Any]],
) -> None:
    _, info = up
    assert {part["name"] for part in info["parts"]} == PARTS
    assert all(process_running(part["pid"]) for part in info["parts"])
    assert info["embedded_redis"] and info["sandbox"]
    assert sorted(info["ready_tenants"]) == ["acme", "globex"]
    user, password = info["flower_auth"].split(":", 1)
    assert user and len(password) >= 12
    with requests.get(f"{info['api_url']}/healthz", timeout=5) as health:
        assert health.status_code == 200
    with requests.get(f"{info['flower_url']}/api/workers", timeout=5) as anonymous:
        assert anonymous.status_code == 401
    with requests.get(
        f"{info['flower_url']}/api/workers", auth=(user, password), timeout=5
    ) as workers:
        assert workers.status_code == 200


@pytest.mark.slow
def test_a_change_in_the_sandbox_reaches_the_http_api(up: tuple[UpProcess, dict[str, Any]]) -> None:
    # Given the stack, the API key it printed and the sandbox's token
    _, info = up
    api = requests.Session()
    api.headers["X-API-Key"] = info["api_keys"]["acme"]
    url = f"{info['api_url']}/api/credits/validate?operation=crm.reports.export&userId=user-123"

    def cost() -> Any:
        with api.get(url, timeout=5) as answer:
            return answer.json().get("creditCost")

    try:
        assert cost() == 5
        # When the Wrapper's data changes (the sandbox publishes the event)
        with requests.put(
            f"{info['wrapper_url']}/_admin/acme/credit-configs/crm.reports.export",
            json={"creditCost": 7},
            headers={"Authorization": f"Bearer {info['wrapper_token']}"},
            timeout=5,
        ) as change:
            assert change.status_code == 200
        # Then the API answers the new cost
        wait_until(lambda: cost() == 7, timeout=10, what="the new cost in the API")
    finally:
        api.close()


@pytest.mark.slow
def test_status_in_a_second_terminal_finds_the_stack_by_itself(
    up: tuple[UpProcess, dict[str, Any]],
) -> None:
    # Given no REDIS_URL or any other crmcache variable, only the stack's state directory
    running, info = up
    done = subprocess.run(
        [CRMCACHE, "status", "--json", "--strict"], env=running.env, capture_output=True, text=True
    )
    # Then status reaches the stack, says so in one line on stderr, and stdout stays JSON
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["workers"]["count"] >= 1
    subscriber_pid = next(p["pid"] for p in info["parts"] if p["name"] == "subscriber")
    assert f":{subscriber_pid}:" in status["subscriber"]["active"]
    assert done.stderr.count("\n") == 1 and "using the dev stack of crmcache up" in done.stderr
    assert "REDIS_URL" in done.stderr


@pytest.mark.slow
def test_the_state_is_private_and_remembers_the_printed_secrets(
    up: tuple[UpProcess, dict[str, Any]],
) -> None:
    running, info = up
    stack = json.loads((running.state / "stack.json").read_text())
    assert stack["env"]["REDIS_URL"] == info["redis_url"] and stack["pid"] == running.process.pid
    remembered = json.loads((running.state / "secrets.json").read_text())
    assert remembered["apiKeys"] == info["api_keys"]
    assert remembered["flowerAuth"] == info["flower_auth"]
    assert remembered["wrapperToken"] == info["wrapper_token"]
    for path in (running.state, running.state / "stack.json", running.state / "secrets.json"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


@pytest.mark.slow
def test_a_second_up_with_the_same_state_is_refused(up: tuple[UpProcess, dict[str, Any]]) -> None:
    running, _ = up
    done = subprocess.run(
        [CRMCACHE, "up", "--no-flower"],
        cwd=running.cwd,
        env=running.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"another crmcache up (pid {running.process.pid})" in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_leaves_nothing_behind(
    up: tuple[UpProcess, dict[str, Any]],
) -> None:
    # Given the running stack (this test runs last in the module)
    running, info = up
    pids = [part["pid"] for part in info["parts"]]
    # When the user presses Ctrl-C
    started = time.monotonic()
    running.process.send_signal(signal.SIGINT)
    code = running.process.wait(timeout=20)
    # Then it exits 0 within seconds, and no part, nor anything a part started, is left
    assert code == 0
    assert time.monotonic() - started < 15
    assert not [pid for pid in pids if process_running(pid)]
    assert not [pid for pid in pids if group_alive(pid)]
    assert list(running.cwd.iterdir()) == []
    assert not Path(info["workdir"]).exists()
    # the secrets stay for the next start; what said "running" is gone
    assert sorted(p.name for p in running.state.iterdir()) == ["secrets.json"]


@pytest.mark.slow
def test_demo_prints_answers_before_and_after_each_change(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ports = [str(free_port()) for _ in range(3)]
    with open(log, "w") as log_file:
        done = subprocess.run(
            [CRMCACHE, "up", "--demo", "--exit", "--json", "--no-flower"]
            + ["--api-port", ports[0], "--sandbox-port", ports[1]],
            cwd=cwd,
            env={**new_user_env(), "CRM_STATE_DIR": str(tmp_path / "state")},
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            timeout=100,
        )
    assert done.returncode == 0, done.stdout[-2000:] + log.read_text()[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    steps = {e["step"]: e for e in events if e["event"] == "demo" and "propagationMs" in e}
    assert set(steps) == {"credit-cost", "suspend-user", "reactivate-user", "top-up"}
    cost = steps["credit-cost"]
    assert cost["before"]["body"]["creditCost"] == 1
    assert cost["after"]["body"]["creditCost"] == 25
    assert steps["suspend-user"]["after"]["body"]["authorized"] is False
    leads = [e["answer"]["status"] for e in events if e.get("step") == "lead"]
    assert leads[:5] == [201, 201, 201, 201, 402]
    assert all(0 < step["propagationMs"] < 15_000 for step in steps.values())


# --- the supervisor ----------------------------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_part_that_dies_is_reported(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as out:
        supervisor = Supervisor(os.environ, str(tmp_path), out=out, grace=2)
        try:
            supervisor.start(Part("steady", _python("import time; time.sleep(30)")))
            supervisor.start(Part("fragile", _python("print('bye'); raise SystemExit(3)")))
            dead = supervisor.watch()
        finally:
            supervisor.stop()
    assert dead is not None and dead.name == "fragile" and dead.exit_code() == 3
    assert "bye" in (tmp_path / "out").read_text()


def test_a_part_ignoring_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    # Given a part that ignores SIGTERM and has a child that does too
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    with open(tmp_path / "out", "w") as out:
        supervisor = Supervisor(os.environ, str(tmp_path), out=out, grace=1)
        part = supervisor.start(Part("stubborn", _python(stubborn)))
        child = int(wait_until(lambda: part.tail and part.tail[0], what="child pid"))
        # When the supervisor stops
        started = time.monotonic()
        killed = supervisor.stop()
    # Then both are gone within the grace period plus a little
    assert killed == ["stubborn"]
    assert time.monotonic() - started < 5
    assert part.pid is not None and not group_alive(part.pid)
    assert not process_running(child)


def test_a_part_that_never_gets_ready_fails_the_start(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as out:
        supervisor = Supervisor(os.environ, str(tmp_path), out=out, grace=1)
        try:
            part = supervisor.start(
                Part("slow", _python("import time; time.sleep(30)"), ready=lambda: False)
            )
            with pytest.raises(PartFailed, match="not ready"):
                supervisor.wait_ready([part], timeout=0.5)
        finally:
            supervisor.stop()


@pytest.mark.slow
def test_a_part_that_dies_stops_the_stack_with_exit_1(tmp_path: Path) -> None:
    # Given a running stack
    with open(tmp_path / "up.log", "w") as log:
        ports = [str(free_port()) for _ in range(2)]
        running = UpProcess(
            tmp_path, log, "--no-flower", "--api-port", ports[0], "--sandbox-port", ports[1]
        )
        try:
            info = running.next_event()
            assert info["event"] == "up"
            pids = [part["pid"] for part in info["parts"]]
            # When one part dies
            beat = next(p["pid"] for p in info["parts"] if p["name"] == "beat")
            os.kill(beat, signal.SIGKILL)
            # Then up says which, stops the rest and exits 1
            failed = running.next_event(timeout=20)
            assert failed["event"] == "failed" and failed["part"] == "beat"
            assert running.process.wait(timeout=20) == 1
            assert not [pid for pid in pids if process_running(pid)]
        finally:
            running.close()


def test_a_taken_usual_port_is_replaced_and_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops.commands._banner import banner
    from ops.dev import devstack

    # Given the API's usual port taken (say, by another crmcache up)
    monkeypatch.setenv("CRM_STATE_DIR", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        usual = taken.getsockname()[1]
        monkeypatch.setitem(devstack.DEFAULT_PORTS, "api", usual)
        stack = devstack.DevStack(devstack.StackOptions())
        try:
            # When the stack picks its ports
            port = stack._port("api", None)
            explicit = stack._port("flower", 5999)
        finally:
            stack.stop()
    # Then another one is used, and the banner says so; an explicit port is not "moved"
    assert port != usual and explicit == 5999
    assert stack.info.moved_ports == {"api": {"wanted": usual, "port": port}}
    assert f"api: {usual} is taken (another crmcache up?), listening on {port}" in banner(
        stack.info, None
    )
