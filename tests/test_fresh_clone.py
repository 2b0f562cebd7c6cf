"""A newcomer's first hour, replayed: a fresh clone, ``crmcache up`` in one terminal, and in a
second one, with no crmcache variable set, the command lines ``up`` printed, ``status``,
``preload`` and ``publish``, then docs/http-api.md's curl session. All of it must succeed.

The clone reuses this virtualenv's interpreter with PYTHONPATH pointing at the clone (a venv per
run would cost minutes); what is tested is the clone's code and its committed files.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from ops.dev.redis_server import free_port
from tests.test_stack import new_user_env

ROOT = Path(__file__).resolve().parent.parent
KEY_PLACEHOLDER = "<acme key printed by make up>"


class Newcomer:
    """The clone, the ``up`` running in it, and what its banner said."""

    def __init__(self, clone: Path, log: IO[str]) -> None:
        self.clone = clone
        self.env = {**new_user_env(), "PYTHONPATH": str(clone)}
        self.ports = [str(free_port()) for _ in range(2)]
        self.up = subprocess.Popen(
            [sys.executable, "-m", "ops", "up", "--no-flower"]
            + ["--api-port", self.ports[0], "--sandbox-port", self.ports[1]],
            cwd=clone,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.banner = self._read_banner()

    def _read_banner(self) -> list[str]:
        assert self.up.stdout is not None
        lines: list[str] = []
        for line in self.up.stdout:
            lines.append(line.rstrip("\n"))
            told = any("In another terminal" in seen for seen in lines)
            if told and not lines[-1]:  # the banner ends with a blank line after its commands
                return lines
        pytest.fail("crmcache up ended before its banner:\n" + "\n".join(lines))

    @property
    def api_url(self) -> str:
        """From the parts table: `  api  pid N  http://127.0.0.1:P  HTTP API ...`."""
        return next(line for line in self.banner if line.startswith("  api ")).split()[3]

    @property
    def acme_key(self) -> str:
        return next(line for line in self.banner if "API key        acme:" in line).split()[3]

    @property
    def commands(self) -> list[str]:
        """The command lines under 'In another terminal', as printed."""
        start = next(i for i, line in enumerate(self.banner) if "In another terminal" in line)
        lines = [line.strip() for line in self.banner[start + 1 :] if line.strip()]
        return [line for line in lines if not line.startswith("(")]

    def second_terminal(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.clone, env=self.env, capture_output=True, text=True, timeout=60
        )

    def stop(self) -> int:
        self.up.send_signal(2)
        try:
            return self.up.wait(timeout=30)
        finally:
            if self.up.stdout is not None:
                self.up.stdout.close()


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    clone = tmp_path_factory.mktemp("fresh") / "crmcache"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    log_path = tmp_path_factory.mktemp("logs") / "up.log"
    with open(log_path, "w") as log:
        running = Newcomer(clone, log)
        try:
            yield running
        finally:
            if running.up.poll() is None:
                running.stop()


# --- curl, replayed with httpx (curl is not a given on every machine) ----------------------------


def _expand(text: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(f"${name}", variables[name])
    return text


def curl(argv: list[str], api_url: str) -> httpx.Response:
    """Do what this curl command line does (the options the docs use)."""
    headers: dict[str, str] = {}
    method, body, url = "GET", None, ""
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-s", "-i"):
            continue
        if arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body, method = next(args), "POST" if method == "GET" else method
        elif arg == "-X":
            method = next(args)
        elif arg.startswith("-"):
            raise AssertionError(f"the replay does not know curl's {arg}")
        else:
            url = arg
    url = re.sub(r"^(https?://)?localhost:8080", api_url, url)
    url = url if url.startswith("http") else f"http://{url}"
    return httpx.request(method, url, headers=headers, content=body, timeout=10)


def doc_session(markdown: str) -> list[tuple[str, list[str]]]:
    """The console block under '## Endpoints': each `$ ` command (continuation lines joined)
    with the lines it shows as its output."""
    block = markdown.split("## Endpoints", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    session: list[tuple[str, list[str]]] = []
    for line in block.strip().splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        elif session and session[-1][0].endswith("\\"):
            session[-1] = (session[-1][0][:-1] + " " + line.strip(), [])
        elif session and line.strip():
            session[-1][1].append(line)
    return session


def _expected_status(output: list[str]) -> int:
    status = next((line for line in output if line.startswith("HTTP/1.1 ")), "HTTP/1.1 200")
    return int(status.split()[1])


def _documented_body(output: list[str]) -> dict[str, object]:
    for line in reversed(output):
        try:
            body = json.loads(line)
        except ValueError:
            continue
        return body if isinstance(body, dict) else {}
    return {}


def _learn_ids(documented: dict[str, object], answer: httpx.Response, ids: dict[str, str]) -> None:
    """Ids the server made (a lead's, a hold's) differ from the documented ones: a reader copies
    them from their own output, so later commands get the real ones in place of the docs'."""
    try:
        body = answer.json()
    except ValueError:
        return
    for name, value in documented.items():
        real = body.get(name) if isinstance(body, dict) else None
        if name.endswith("Id") and isinstance(value, str) and isinstance(real, str):
            ids.setdefault(value, real)


def replay(
    command: str,
    output: list[str],
    variables: dict[str, str],
    api_url: str,
    ids: dict[str, str],
) -> None:
    """Run one line of the session and check it answers as documented (status, JSON fields);
    `ids` maps the docs' server-made ids to the ones this run's server made."""
    for documented_id, real_id in ids.items():
        command = command.replace(documented_id, real_id)
    if command.startswith("#"):
        return  # narration: what happens when a client retries
    assignment = re.fullmatch(r"(\w+)=(.*)", command)
    if assignment:
        variables[assignment[1]] = shlex.split(_expand(assignment[2], variables))[0]
        return
    pipeline = [part.strip() for part in command.split(" | ")]
    argv = shlex.split(_expand(pipeline[0], variables), comments=True)
    answer = curl(argv, api_url)
    assert answer.status_code == _expected_status(output), (command, answer.text)
    if len(pipeline) > 1:  # `| grep NAME`
        assert shlex.split(pipeline[1])[1] in answer.text, command
        return
    documented = _documented_body(output)
    if documented:
        missing = set(documented) - set(answer.json())
        assert not missing, (command, missing, answer.text)
        _learn_ids(documented, answer, ids)


@pytest.mark.slow
def test_a_second_terminal_needs_no_variables(newcomer: Newcomer) -> None:
    commands = newcomer.commands
    tool = shlex.split(commands[0])[0]
    assert tool.endswith("crmcache") and commands[0].endswith("status --watch"), commands
    # status, as a script reads it: the stack found without REDIS_URL, said on stderr
    status = newcomer.second_terminal([tool, "status", "--json", "--strict"])
    assert status.returncode == 0, status.stderr
    assert "using the dev stack of crmcache up" in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1, status.stderr
    assert {t["tenant"] for t in json.loads(status.stdout)["tenants"]} == {"acme", "globex"}
    # the command lines up printed, as printed: preload and publish succeed
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == tool and argv[1] != "status":
            done = newcomer.second_terminal(argv)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
    # and the curl lines it printed
    for line in commands:
        if line.startswith("curl "):
            assert curl(shlex.split(line), newcomer.api_url).status_code == 200, line


@pytest.mark.slow
def test_the_docs_curl_session_runs_as_written(newcomer: Newcomer) -> None:
    # Given the acme key the banner printed, put in for the docs' placeholder
    api_url, key = newcomer.api_url, newcomer.acme_key
    markdown = (newcomer.clone / "docs" / "http-api.md").read_text()
    assert KEY_PLACEHOLDER in markdown
    variables: dict[str, str] = {}
    ids: dict[str, str] = {}
    # When every command of the session runs, in order
    for command, output in doc_session(markdown.replace(KEY_PLACEHOLDER, key)):
        replay(command, output, variables, api_url, ids)
    # Then each answered as documented, and the clone is as clean as it came
    assert variables["KEY"] == key
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=newcomer.clone, capture_output=True, text=True
    )
    assert dirty.stdout == "", dirty.stdout


@pytest.mark.slow
def test_ctrl_c_leaves_only_the_remembered_secrets(newcomer: Newcomer) -> None:
    assert newcomer.stop() == 0
    state = newcomer.clone / ".crmcache"
    # the secrets kept for the next start, and the leads database of make up (SQLite)
    assert sorted(p.name for p in state.iterdir()) == ["leads.sqlite3", "secrets.json"]
    assert (state / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
